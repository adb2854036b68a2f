"""Editing and exploring latents: GANSpace directions (`ganspace`) and interpolation between latents
(`interpolate`, the paper's table 3)."""
