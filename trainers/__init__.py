"""Alignment trainers: job store, datasets, workers and the training recipes."""
