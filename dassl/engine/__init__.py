"""Trainers: the registry, the builder and Dassl's trainer base classes."""
from .build import TRAINER_REGISTRY, build_trainer, expected_fingerprint
from .trainer import NullWriter, SimpleTrainer, TrainerBase, TrainerX, TrainerXU, TrainingDiverged

__all__ = ["TRAINER_REGISTRY", "build_trainer", "expected_fingerprint", "TrainerBase", "SimpleTrainer", "TrainerX", "TrainerXU", "NullWriter",
           "TrainingDiverged"]
