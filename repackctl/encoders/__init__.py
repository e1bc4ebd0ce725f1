"""Frozen vision encoders: the EncoderSpec contract, timm DINOv2/DINOv3, the built-in encoder."""
