"""Metrics shared by trainers."""
from .accuracy import compute_accuracy

__all__ = ["compute_accuracy"]
