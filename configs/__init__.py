"""Training presets and the option resolver (`configs.presets`)."""
