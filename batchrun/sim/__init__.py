"""The simulated provider: its HTTP routes, its admission and billing, its answers, its Batch API."""
