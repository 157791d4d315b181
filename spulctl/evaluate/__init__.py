"""Evaluation: predictions, metrics, reports."""
