"""Experiment workflow: sweeps, result tables, plots and a launcher (run from the repository root).

Each module is a CLI (``python -m scripts.sweep``, ``python -m scripts.parse_test_res``, ...) and a small
importable API; the ``scripts/<method>/*.sh`` files are thin wrappers around ``scripts.sweep``.
"""
