"""Dataset base classes and the registry that ``DATASET.NAME`` is looked up in."""
from .base_dataset import DatasetBase, Datum
from .build import DATASET_REGISTRY, build_dataset, data_dirs, data_identity

__all__ = ["Datum", "DatasetBase", "DATASET_REGISTRY", "build_dataset", "data_dirs", "data_identity"]
