"""Model architectures (HF config.json, the shipped catalogue) and GPU specs, with their sources."""
