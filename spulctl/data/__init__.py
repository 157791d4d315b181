"""Datasets: readers and writers, task formatting, splitters, the built-in demo dataset."""
