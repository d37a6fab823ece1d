"""Baselines and controls: every module here is imported by prunebench.training.registry."""
