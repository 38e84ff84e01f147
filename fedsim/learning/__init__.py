"""Datasets, partitions, models as flat parameter vectors, and trainers."""
