"""batchrun: run large batches of prompts through hosted LLM APIs, every row once, at the provider's rate."""

__version__ = "0.1.0"
