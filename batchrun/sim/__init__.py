"""The simulated provider: its HTTP server, its answers, its Batch API."""
