"""Inferers: running a network over a volume (sliding windows now; slice-wise beside it for 2D
models)."""
