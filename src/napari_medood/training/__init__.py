"""Training loops (one per method), their configurations and data pipelines."""
