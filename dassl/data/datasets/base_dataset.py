"""Dassl's ``Datum`` / ``DatasetBase`` with the project's caption field.

Compatible with Dassl.pytorch's API (spec §10.3) with three deliberate differences:

* ``Datum`` does not stat its image (bug B23): checking ~157k files one ``stat`` at a time made
  construction slow, and a missing file is better reported once, in bulk, by the dataset (or at
  read time with its path).
* ``DatasetBase`` accepts the label-ordered ``classnames`` (bug B25): deriving them from the
  few-shot train set silently drops a class that has no train image and misaligns labels and names.
* ``generate_fewshot_dataset`` takes an explicit ``random.Random`` so a sample depends only on the
  seed and the data, not on whatever consumed the global RNG before.
"""
from __future__ import annotations

import logging
import os
import random
from collections import defaultdict
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

__all__ = ["Datum", "DatasetBase"]

logger = logging.getLogger(__name__)


class Datum:
    """One labelled image record; immutable so that cached splits cannot be mutated in place."""

    __slots__ = ("_impath", "_label", "_domain", "_classname", "_caption")

    def __init__(
        self,
        impath: Union[str, os.PathLike[str]] = "",
        label: int = 0,
        domain: int = 0,
        classname: str = "",
        caption: str = "",
    ) -> None:
        if not isinstance(impath, (str, os.PathLike)):
            raise TypeError(f"Datum.impath must be a path string, got {type(impath).__name__}")
        self._impath = os.fspath(impath)
        self._label = int(label)
        self._domain = int(domain)
        self._classname = str(classname)
        self._caption = "" if caption is None else str(caption)

    @property
    def impath(self) -> str:
        return self._impath

    @property
    def label(self) -> int:
        return self._label

    @property
    def domain(self) -> int:
        return self._domain

    @property
    def classname(self) -> str:
        return self._classname

    @property
    def caption(self) -> str:
        return self._caption

    def _key(self) -> Tuple[str, int, int, str, str]:
        return (self._impath, self._label, self._domain, self._classname, self._caption)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Datum):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (
            f"Datum(impath={self._impath!r}, label={self._label}, domain={self._domain}, "
            f"classname={self._classname!r}, caption={self._caption!r})"
        )

    # Slots without __dict__ would pickle with protocol >= 2 anyway; spelling the state out keeps
    # protocol 0/1 (and copy.copy) working too.
    def __getstate__(self) -> Tuple[str, int, int, str, str]:
        return self._key()

    def __setstate__(self, state: Tuple[str, int, int, str, str]) -> None:
        self._impath, self._label, self._domain, self._classname, self._caption = state


class DatasetBase:
    """Container of the train/val/test ``Datum`` lists plus the label ↔ name mapping.

    When ``classnames`` (ordered by label) is given it is authoritative: ``num_classes`` is its
    length and every datum's label must index into it (B25). Without it the mapping is derived from
    ``train_x`` exactly as Dassl does, for datasets that have no better source of names.
    """

    dataset_dir = ""  # the directory where the dataset is stored
    domains: Sequence[str] = ()  # domain names (DA/DG datasets only)
    #: digest of the sampled few-shot train/val records (set by datasets that sample; recorded in
    #: the run fingerprint, see dassl.results).
    fewshot_digest: Optional[str] = None

    @classmethod
    def data_identity(cls, cfg: Any) -> Dict[str, Any]:
        """What the data of a run configured by ``cfg`` *is*, computed without building the dataset
        (e.g. split-file digests), for the run fingerprint (dassl.results). The folder is not
        identity; the content is. The default knows nothing: override it."""
        return {}

    def __init__(
        self,
        train_x: Optional[List[Datum]] = None,
        train_u: Optional[List[Datum]] = None,
        val: Optional[List[Datum]] = None,
        test: Optional[List[Datum]] = None,
        classnames: Optional[Sequence[str]] = None,
    ) -> None:
        self._train_x = train_x  # labeled training data
        self._train_u = train_u  # unlabeled training data (optional)
        self._val = val  # validation data (optional)
        self._test = test  # test data

        if classnames is not None:
            names = [str(c) for c in classnames]
            self._check_against_classnames(names)
            self._classnames = names
            self._lab2cname = dict(enumerate(names))
            self._num_classes = len(names)
        else:
            source = train_x or []
            self._num_classes = self.get_num_classes(source)
            self._lab2cname, self._classnames = self.get_lab2cname(source)

    def _check_against_classnames(self, names: List[str]) -> None:
        """Fail early when a datum's label or name disagrees with the authoritative names."""
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"classnames contain duplicates: {dup}")
        num = len(names)
        for split, data in (("train_x", self._train_x), ("train_u", self._train_u),
                            ("val", self._val), ("test", self._test)):
            for item in data or []:
                if not 0 <= item.label < num:
                    raise ValueError(
                        f"{split}: label {item.label} of {item.impath!r} is outside 0..{num - 1} "
                        f"({num} classnames given)"
                    )
                if item.classname and item.classname != names[item.label]:
                    raise ValueError(
                        f"{split}: {item.impath!r} has classname {item.classname!r} but label "
                        f"{item.label} is named {names[item.label]!r}"
                    )

    @property
    def train_x(self) -> Optional[List[Datum]]:
        return self._train_x

    @property
    def train_u(self) -> Optional[List[Datum]]:
        return self._train_u

    @property
    def val(self) -> Optional[List[Datum]]:
        return self._val

    @property
    def test(self) -> Optional[List[Datum]]:
        return self._test

    @property
    def lab2cname(self) -> Dict[int, str]:
        return self._lab2cname

    @property
    def classnames(self) -> List[str]:
        return self._classnames

    @property
    def num_classes(self) -> int:
        return self._num_classes

    @staticmethod
    def get_num_classes(data_source: Iterable[Datum]) -> int:
        """Number of classes as max label + 1 (Dassl's rule; 0 for an empty source)."""
        label_set = {item.label for item in data_source}
        return max(label_set) + 1 if label_set else 0

    @staticmethod
    def get_lab2cname(data_source: Iterable[Datum]) -> Tuple[Dict[int, str], List[str]]:
        """Label → name mapping and the names ordered by label, from the data itself."""
        container = {(item.label, item.classname) for item in data_source}
        mapping = {label: classname for label, classname in container}
        labels = sorted(mapping)
        return mapping, [mapping[label] for label in labels]

    def check_input_domains(self, source_domains: Sequence[str], target_domains: Sequence[str]) -> None:
        assert len(source_domains) > 0, "source_domains (list) is empty"
        assert len(target_domains) > 0, "target_domains (list) is empty"
        self.is_input_domain_valid(source_domains)
        self.is_input_domain_valid(target_domains)

    def is_input_domain_valid(self, input_domains: Sequence[str]) -> None:
        for domain in input_domains:
            if domain not in self.domains:
                raise ValueError(
                    f"Input domain must belong to {list(self.domains)}, but got [{domain}]"
                )

    @staticmethod
    def split_dataset_by_label(data_source: Iterable[Datum]) -> Dict[int, List[Datum]]:
        """Group by label, keeping first-seen label order (the few-shot sampler relies on it)."""
        output: Dict[int, List[Datum]] = defaultdict(list)
        for item in data_source:
            output[item.label].append(item)
        return output

    @staticmethod
    def split_dataset_by_domain(data_source: Iterable[Datum]) -> Dict[int, List[Datum]]:
        output: Dict[int, List[Datum]] = defaultdict(list)
        for item in data_source:
            output[item.domain].append(item)
        return output

    @staticmethod
    def generate_fewshot_dataset(
        *data_sources: List[Any],
        num_shots: int = -1,
        repeat: bool = False,
        rng: Optional[random.Random] = None,
    ) -> Union[List[Any], List[List[Any]]]:
        """Keep ``num_shots`` items per label of each source.

        Per label (in first-seen order): ``rng.sample(items, K)`` when there are at least K items,
        otherwise all of them, or ``rng.choices(items, k=K)`` with ``repeat``. This is Dassl's
        algorithm, so with ``rng = random.Random(seed)`` the draw equals Dassl's after
        ``random.seed(seed)``. ``rng=None`` falls back to the global ``random`` module for
        Dassl-compatible callers; the project's datasets always pass their own generator.
        Returns the single list when one source is given.
        """
        if num_shots < 1:
            if len(data_sources) == 1:
                return data_sources[0]
            return list(data_sources)

        sampler: Any = rng if rng is not None else random
        logger.info("Creating a %d-shot dataset", num_shots)

        output = []
        for data_source in data_sources:
            tracker = DatasetBase.split_dataset_by_label(data_source)
            dataset: List[Any] = []
            for items in tracker.values():
                if len(items) >= num_shots:
                    sampled = sampler.sample(items, num_shots)
                elif repeat:
                    sampled = sampler.choices(items, k=num_shots)
                else:
                    sampled = items
                dataset.extend(sampled)
            output.append(dataset)

        if len(output) == 1:
            return output[0]
        return output
