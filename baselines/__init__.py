"""Baselines and controls; importing this package registers them."""
from baselines import dense, random  # noqa: F401
