"""Evaluators (``TEST.EVALUATOR``) and the H-mean used for OOP/IP summaries."""
from .clustering import ClusteringAccuracy
from .evaluator import EVALUATOR_REGISTRY, Classification, EvaluatorBase, build_evaluator, hmean

__all__ = [
    "EVALUATOR_REGISTRY",
    "build_evaluator",
    "EvaluatorBase",
    "Classification",
    "ClusteringAccuracy",
    "hmean",
]
