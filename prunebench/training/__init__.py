"""Stage 2, one run: models, the method interface and registry, masks, the training loop,
metrics, the run folder (run) and the saved network (artifact), GPU slots."""
