"""GAN metrics (FID, KID, precision/recall, PPL) and inversion reconstruction metrics.

Entry points: `metrics.metric_main.calc_metric(name, ...)` (registry by name, used by the
training loop and `calc_metrics.py`) and `metrics.metric_main.report_metric(...)`.
Nothing is imported or loaded here: feature detectors are loaded on first use.
"""
