"""Domain names for the sweeps and tables, and class counts read from the data on disk.

The reference scripts hard-coded the 400M OOP class counts (B33), which silently gave wrong batch
sizes for the 2B/5B variants. Here every count comes from the split file that the loader itself
would read, through the discovery code of ``datasets.laion_beyond`` (no second discovery).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Dict, Iterable, List, Sequence

__all__ = [
    "LAION_BEYOND_DOMAINS",
    "REPO_ROOT",
    "DomainError",
    "laion_beyond_classes",
    "resolve_domain",
    "resolve_domains",
    "names_dataset",
    "short_name",
    "unmatched_names",
    "count_classes",
    "check_shots",
    "has_subset",
    "repo_path",
    "largest_class",
]

REPO_ROOT = Path(__file__).resolve().parents[1]


def repo_path(path: str) -> str:
    """``path`` as the planners' commands read it: they run from the repository root (scripts.sweep,
    scripts.launch), so a relative path is relative to it, also for what a planner reads itself."""
    return path if not path or os.path.isabs(path) else os.fspath(REPO_ROOT / path)

#: The nine benchmark domains (registered dataset names = ``configs/datasets/<name>.yaml``), in the
#: column order of the paper's table. Only the names live here; class counts are read from disk.
LAION_BEYOND_DOMAINS = (
    "Animals92_42",
    "Architecture50_23",
    "Attire54_28",
    "FolkArt59_27",
    "Food53_27",
    "Insects_Spiders106_52",
    "Landmark59_30",
    "Plants_Fugi113_56",
    "Pokemon89_39",
)

_COUNT_SUFFIX = re.compile(r"\d+(_\d+)?$")


class DomainError(ValueError):
    """A domain name cannot be resolved or its classes cannot be counted."""


def laion_beyond_classes() -> Dict[str, type]:
    """Registered LAION-Beyond-style datasets by name (importing ``datasets`` registers them)."""
    # Local on purpose: datasets loads torch/open_clip; parse_test_res and fsnl_rule import this module.
    import datasets  # noqa: F401  (registration side effect)
    from datasets.laion_beyond import laion_beyond_domains

    return laion_beyond_domains()


def _registered_names() -> List[str]:
    # Local on purpose: datasets loads torch/open_clip; parse_test_res and fsnl_rule import this module.
    import datasets  # noqa: F401
    from dassl.data.datasets import DATASET_REGISTRY

    return list(DATASET_REGISTRY.registered_names())


def resolve_domain(name: str) -> str:
    """Map a registered name (``Animals92_42``) or a short name (``Animals``, ``insects``) to the registered name.

    Short names matter because the class counts in the registered names are those of the 400M
    release: users of other variants should not have to type numbers that do not describe their data.
    """
    registered = _registered_names()
    if name in registered or (REPO_ROOT / "configs" / "datasets" / f"{name}.yaml").is_file():
        return name
    lowered = name.lower()
    for reg in registered:
        if reg.lower() == lowered:
            return reg
    domains = laion_beyond_classes()
    exact = [n for n, cls in domains.items() if cls.prefix.lower() == lowered]
    hits = exact or [n for n, cls in domains.items() if cls.prefix.lower().startswith(lowered)]
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        preferred = [h for h in hits if h in LAION_BEYOND_DOMAINS]
        if len(preferred) == 1:
            return preferred[0]
        raise DomainError(f"Domain {name!r} is ambiguous: {', '.join(sorted(hits))}")
    # Local on purpose: dassl.utils loads torch; parse_test_res and fsnl_rule import this module.
    from dassl.utils import closest_name

    hint = closest_name(name, list(domains) + [cls.prefix for cls in domains.values()])
    suggestion = f' Did you mean "{hint}"?' if hint else ""
    raise DomainError(
        f"Unknown domain {name!r}.{suggestion} Known LAION-Beyond domains: {', '.join(sorted(domains))}"
    )


def resolve_domains(names: Iterable[str]) -> List[str]:
    """Resolve several names, dropping duplicates but keeping the order given."""
    out: List[str] = []
    for name in names:
        resolved = resolve_domain(name)
        if resolved not in out:
            out.append(resolved)
    return out


def short_name(dataset: str) -> str:
    """Column title for a dataset: the registered name without its class counts (``Animals92_42`` → ``Animals``)."""
    stripped = _COUNT_SUFFIX.sub("", dataset)
    return stripped or dataset


def names_dataset(name: str, dataset: str) -> bool:
    """Whether a user's ``name`` (registered or short, as ``--domains`` takes them) means ``dataset``."""
    return name in (dataset, short_name(dataset))


def unmatched_names(names: Iterable[str], datasets: Iterable[str]) -> List[str]:
    """The ``names`` that mean none of ``datasets`` (a typo, or a domain without results), in order."""
    found = list(datasets)
    return [n for n in names if not any(names_dataset(n, d) for d in found)]


def _read_subset(root: str, dataset: str, subset: str) -> Any:
    """The split of one subset of ``dataset`` under ``root`` (``datasets.laion_beyond.SubsetSplit``)."""
    # Local on purpose: datasets loads torch/open_clip; parse_test_res and fsnl_rule import this module.
    from datasets.laion_beyond import DatasetError, find_subset_dir, load_subset

    domains = laion_beyond_classes()
    if dataset not in domains:
        raise DomainError(
            f"Cannot count the classes of {dataset!r}: it is not a registered LAION-Beyond-style dataset "
            f"(known: {', '.join(sorted(domains))})"
        )
    prefix = domains[dataset].prefix
    try:
        return load_subset(find_subset_dir(os.fspath(root), prefix, subset), subset)
    except DatasetError as err:
        raise DomainError(f"Cannot count the {subset} classes of {dataset}: {err}") from err


def has_subset(root: str, dataset: str, subset: str = "OOP") -> bool:
    """Whether ``root`` holds a folder for one subset of ``dataset`` (read or not: a broken one counts,
    so that whoever reads it next reports why)."""
    # Local on purpose, as in _read_subset.
    from datasets.laion_beyond import DatasetError, DatasetNotFoundError, find_subset_dir

    domains = laion_beyond_classes()
    if dataset not in domains:
        return False
    try:
        find_subset_dir(os.fspath(root), domains[dataset].prefix, subset)
    except DatasetNotFoundError:
        return False
    except DatasetError:  # several matches and the like: there is data, and it has a problem to report
        return True
    return True


def count_classes(root: str, dataset: str, subset: str = "OOP") -> int:
    """Number of classes of one subset of ``dataset`` under ``root``, read from its split file."""
    return len(_read_subset(root, dataset, subset).classnames)


def largest_class(root: str, dataset: str, subset: str = "OOP") -> int:
    """The most training images any class of one subset has: a shot count above it would train every
    class on all its images (the dataset refuses such a ``NUM_SHOTS``)."""
    return int(_read_subset(root, dataset, subset).largest_class)


def check_shots(root: str, dataset: str, shots: Sequence[int], subset: str = "OOP") -> None:
    """Refuse (:class:`DomainError`) shot counts above every class's training images under ``root``: each
    such run would fail on its own (the dataset refuses the ``NUM_SHOTS``), so a planner says it once."""
    largest = largest_class(root, dataset, subset)
    too_many = sorted({int(k) for k in shots if int(k) > largest})
    if too_many:
        raise DomainError(f"--shots {' '.join(map(str, too_many))}: no class of {dataset} under --root has that "
                          f"many training images (at most {largest}); use shot counts <= {largest}")
