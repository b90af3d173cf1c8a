"""Networks and their checkpoints.

``unet`` (the deep-supervised 3D U-Net) imports torch; ``checkpoint`` imports it only when
weights are saved or loaded. Importing this package itself loads neither.
"""
