"""Data: datasets, samplers, transforms, loaders."""
from .data_manager import DataManager, DatasetWrapper, LoaderError, build_data_loader

__all__ = ["DataManager", "DatasetWrapper", "LoaderError", "build_data_loader"]
