"""The two proposed methods: every module here is imported by prunebench.training.registry."""
