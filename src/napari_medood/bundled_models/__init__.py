"""Models shipped with napari-medood: one folder each, with ``card.json`` and
``model.safetensors`` (the repository's top-level ``models/`` points here)."""
