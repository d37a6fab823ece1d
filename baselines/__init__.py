"""Baselines and controls; importing this package registers them."""
from baselines import dense, edgepopup, magnitude, random, snip, supermask  # noqa: F401
