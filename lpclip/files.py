"""What the feature extractor and the linear probe share: the file layout, the fingerprint and job keys
and the error type. Kept free of torch/open_clip imports so that the probe starts without loading a
backbone stack it never uses."""
from __future__ import annotations

import json
import os.path as osp
import zipfile
from typing import Any, Dict, List, Mapping, Optional

import numpy as np

SPLITS = ("train", "val", "test")
#: Name of the 0-d string array holding the backbone fingerprint (JSON) in every feature file.
FINGERPRINT_KEY = "fingerprint"
#: Name of the 0-d string array holding the file's job identity (JSON): everything the features are a
#: function of -- backbone, transform, data, split, views, seed -- computed from the config alone, so a
#: sweep can tell whether a file on disk is the one its extractor job would write.
JOB_KEY = "job"


class FeatureError(ValueError):
    """A user-facing problem with feature files or their extraction, reported as one ``error:`` line."""


class OutputConflictError(ValueError):
    """The probe's output directory holds another configuration's results (one ``error:`` line)."""


def feature_file(output_dir: str, dataset_name: str, sub_classes: str, split: str) -> str:
    """``<output_dir>/<DATASET.NAME>/<SUB_CLASSES>/<split>.npz``: the one layout of both tools (B31)."""
    return osp.join(output_dir, dataset_name, sub_classes, f"{split}.npz")


def read_job(path: str) -> Optional[Dict[str, Any]]:
    """The job identity stored in the feature file ``path``; None when the file has none (written
    before files recorded it). Raises :class:`FeatureError` (naming the file) for a file that cannot
    be read."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if JOB_KEY not in data.files:
                return None
            return json.loads(str(data[JOB_KEY]))
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise FeatureError(f"{path} is not a readable feature file ({type(err).__name__}: {err})") from err


def job_differences(stored: Optional[Mapping[str, Any]], expected: Mapping[str, Any]) -> List[str]:
    """The keys in which a file's stored job identity differs from the expected one ("job identity
    missing" for a file without one); empty when they agree."""
    if stored is None:
        return ["job identity missing (written by an older extractor, or from unseeded random weights, which "
                "no identity can name: --seed S gives one)"]
    keys = sorted(set(stored) | set(expected))
    return [k for k in keys if stored.get(k) != expected.get(k)]
