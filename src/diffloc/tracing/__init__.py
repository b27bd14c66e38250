"""Localization: causal tracing of the UNet and text encoder, and LocoGen window search."""
