"""Utilities: registries, logging, seeding, file I/O, checkpoints and meters.

Only light dependencies are imported here (torch, numpy, PIL): importing ``dassl`` must never pull
in optional packages such as wilds or tensorboard (bug B34).
"""
from .env import collect_env_info, package_versions
from .logger import setup_logger
from .meters import AverageMeter, MetricMeter
from .registry import Registry, check_availability, closest_name
from .tools import (
    ImageNotFoundError,
    UnreadableImageError,
    WriteError,
    atomic_write,
    atomic_write_text,
    check_isfile,
    check_writable_dir,
    clean_temp_files,
    derive_seed,
    listdir_nohidden,
    mkdir_if_missing,
    read_image,
    read_json,
    set_random_seed,
    shown_path,
    tolist_if_not,
    write_error,
    write_json,
)
from .torchtools import (
    BEST_NAME,
    POINTER_NAME,
    CheckpointError,
    atomic_torch_save,
    count_num_param,
    list_checkpoints,
    load_checkpoint,
    load_pretrained_weights,
    regular_name,
    resume_from_checkpoint,
    save_checkpoint,
    strip_module_prefix,
)

__all__ = [
    "Registry",
    "check_availability",
    "closest_name",
    "setup_logger",
    "set_random_seed",
    "collect_env_info",
    "package_versions",
    "mkdir_if_missing",
    "check_isfile",
    "read_image",
    "shown_path",
    "UnreadableImageError",
    "ImageNotFoundError",
    "read_json",
    "write_json",
    "atomic_write_text",
    "atomic_write",
    "WriteError",
    "write_error",
    "check_writable_dir",
    "clean_temp_files",
    "derive_seed",
    "listdir_nohidden",
    "tolist_if_not",
    "load_checkpoint",
    "save_checkpoint",
    "resume_from_checkpoint",
    "load_pretrained_weights",
    "count_num_param",
    "strip_module_prefix",
    "list_checkpoints",
    "regular_name",
    "atomic_torch_save",
    "BEST_NAME",
    "CheckpointError",
    "POINTER_NAME",
    "MetricMeter",
    "AverageMeter",
]
