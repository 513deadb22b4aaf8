"""What the feature extractor and the linear probe share: the file layout, the fingerprint key and the
error type. Kept free of torch/open_clip imports so that the probe starts without loading a backbone
stack it never uses."""
from __future__ import annotations

import os.path as osp

SPLITS = ("train", "val", "test")
#: Name of the 0-d string array holding the backbone fingerprint (JSON) in every feature file.
FINGERPRINT_KEY = "fingerprint"


class FeatureError(ValueError):
    """A user-facing problem with feature files or their extraction, reported as one ``error:`` line."""


def feature_file(output_dir: str, dataset_name: str, sub_classes: str, split: str) -> str:
    """``<output_dir>/<DATASET.NAME>/<SUB_CLASSES>/<split>.npz``: the one layout of both tools (B31)."""
    return osp.join(output_dir, dataset_name, sub_classes, f"{split}.npz")
