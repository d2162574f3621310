"""The job spec: what the user writes (the model and its parsing, provider presets, prices, YAML loading)."""
