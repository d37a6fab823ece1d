"""prunebench: a benchmark and reproducibility suite for neural-network pruning."""

__version__ = "0.1.0"
