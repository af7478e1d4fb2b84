"""What a run leaves: the metrics sink, request/step tables, summaries, and the guidellm report."""
