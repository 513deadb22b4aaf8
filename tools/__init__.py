"""Offline tooling: the Mini-Beyond asset pipeline and helpers that are not part of training."""
