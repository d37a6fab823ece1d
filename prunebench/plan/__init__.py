"""What to run, without torch: one run's settings (config, values), the methods read from
source (catalogue) and a workflow config's grid of runs (grid)."""
