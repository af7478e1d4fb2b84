"""servesim: a discrete-event simulator of LLM serving with vLLM V1 semantics, on SimPy."""

__version__ = "0.1.0"
