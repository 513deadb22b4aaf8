"""Index samplers for the data loaders (``DATALOADER.*.SAMPLER``).

All randomness comes from Python's ``random`` / torch's global generator, which the engine reseeds
at the start of every epoch, so an epoch's order depends only on (SEED, epoch).
"""
from __future__ import annotations

import copy
import random
from collections import defaultdict
from typing import Any, Dict, Iterator, List, Optional, Sequence

from torch.utils.data.sampler import RandomSampler, Sampler, SequentialSampler

from ..utils.registry import check_availability

__all__ = [
    "build_sampler",
    "RandomDomainSampler",
    "SeqDomainSampler",
    "RandomClassSampler",
    "AVAI_SAMPLERS",
]

AVAI_SAMPLERS = (
    "RandomSampler",
    "SequentialSampler",
    "RandomDomainSampler",
    "SeqDomainSampler",
    "RandomClassSampler",
)


def _group_indices(data_source: Sequence[Any], attr: str) -> Dict[int, List[int]]:
    groups: Dict[int, List[int]] = defaultdict(list)
    for i, item in enumerate(data_source):
        groups[getattr(item, attr)].append(i)
    return groups


class RandomDomainSampler(Sampler):
    """Each batch draws ``batch_size / n_domain`` items from each of ``n_domain`` random domains.

    An epoch ends when a chosen domain cannot fill its share any more.
    """

    def __init__(self, data_source: Sequence[Any], batch_size: int, n_domain: int) -> None:
        self.data_source = data_source
        self.domain_dict = _group_indices(data_source, "domain")
        self.domains = list(self.domain_dict.keys())
        if n_domain is None or n_domain <= 0:
            n_domain = len(self.domains)
        if batch_size % n_domain != 0:
            raise ValueError(f"batch_size ({batch_size}) must be divisible by n_domain ({n_domain})")
        if n_domain > len(self.domains):
            raise ValueError(f"n_domain ({n_domain}) exceeds the number of domains ({len(self.domains)})")
        self.n_img_per_domain = batch_size // n_domain
        self.batch_size = batch_size
        self.n_domain = n_domain
        self.length = len(list(self.__iter__()))

    def __iter__(self) -> Iterator[int]:
        domain_dict = copy.deepcopy(self.domain_dict)
        final_idxs: List[int] = []
        while True:
            selected = random.sample(self.domains, self.n_domain)
            if any(len(domain_dict[d]) < self.n_img_per_domain for d in selected):
                break
            for d in selected:
                picked = random.sample(domain_dict[d], self.n_img_per_domain)
                final_idxs.extend(picked)
                remaining = set(picked)
                domain_dict[d] = [i for i in domain_dict[d] if i not in remaining]
        return iter(final_idxs)

    def __len__(self) -> int:
        return self.length


class SeqDomainSampler(Sampler):
    """Every batch holds ``batch_size / n_domains`` items of every domain, in domain order."""

    def __init__(self, data_source: Sequence[Any], batch_size: int) -> None:
        self.data_source = data_source
        self.domain_dict = _group_indices(data_source, "domain")
        self.domains = sorted(self.domain_dict.keys())
        n_domain = len(self.domains)
        if n_domain == 0 or batch_size % n_domain != 0:
            raise ValueError(f"batch_size ({batch_size}) must be divisible by the number of domains ({n_domain})")
        self.n_img_per_domain = batch_size // n_domain
        self.batch_size = batch_size
        self.n_domain = n_domain
        self.length = len(list(self.__iter__()))

    def __iter__(self) -> Iterator[int]:
        domain_dict = copy.deepcopy(self.domain_dict)
        final_idxs: List[int] = []
        while True:
            if any(len(domain_dict[d]) < self.n_img_per_domain for d in self.domains):
                break
            for d in self.domains:
                picked = random.sample(domain_dict[d], self.n_img_per_domain)
                final_idxs.extend(picked)
                remaining = set(picked)
                domain_dict[d] = [i for i in domain_dict[d] if i not in remaining]
        return iter(final_idxs)

    def __len__(self) -> int:
        return self.length


class RandomClassSampler(Sampler):
    """Each batch holds ``batch_size / n_ins`` distinct classes with ``n_ins`` items each.

    A class with fewer than ``n_ins`` items is padded by sampling with replacement.
    """

    def __init__(self, data_source: Sequence[Any], batch_size: int, n_ins: int) -> None:
        if n_ins <= 0 or batch_size < n_ins:
            raise ValueError(f"batch_size ({batch_size}) must be at least n_ins ({n_ins}) > 0")
        self.data_source = data_source
        self.batch_size = batch_size
        self.n_ins = n_ins
        self.ncls_per_batch = batch_size // n_ins
        self.index_dic = _group_indices(data_source, "label")
        self.labels = list(self.index_dic.keys())
        if len(self.labels) < self.ncls_per_batch:
            raise ValueError(
                f"RandomClassSampler needs at least {self.ncls_per_batch} classes, found {len(self.labels)}"
            )
        self.length = 0
        for label in self.labels:
            num = max(len(self.index_dic[label]), self.n_ins)
            self.length += num - num % self.n_ins

    def __iter__(self) -> Iterator[int]:
        chunks: Dict[int, List[List[int]]] = defaultdict(list)
        for label in self.labels:
            idxs = list(self.index_dic[label])
            if len(idxs) < self.n_ins:
                idxs = random.choices(idxs, k=self.n_ins)
            random.shuffle(idxs)
            for start in range(0, len(idxs) - self.n_ins + 1, self.n_ins):
                chunks[label].append(idxs[start : start + self.n_ins])

        avai_labels = [label for label in self.labels if chunks[label]]
        final_idxs: List[int] = []
        while len(avai_labels) >= self.ncls_per_batch:
            for label in random.sample(avai_labels, self.ncls_per_batch):
                final_idxs.extend(chunks[label].pop(0))
                if not chunks[label]:
                    avai_labels.remove(label)
        return iter(final_idxs)

    def __len__(self) -> int:
        return self.length


def build_sampler(
    sampler_type: str,
    cfg: Optional[Any] = None,
    data_source: Optional[Sequence[Any]] = None,
    batch_size: int = 32,
    n_domain: int = 0,
    n_ins: int = 2,
) -> Sampler:
    """Construct the sampler named ``sampler_type`` over ``data_source``."""
    check_availability(sampler_type, AVAI_SAMPLERS)
    if sampler_type == "RandomSampler":
        return RandomSampler(data_source)
    if sampler_type == "SequentialSampler":
        return SequentialSampler(data_source)
    if sampler_type == "RandomDomainSampler":
        return RandomDomainSampler(data_source, batch_size, n_domain)
    if sampler_type == "SeqDomainSampler":
        return SeqDomainSampler(data_source, batch_size)
    return RandomClassSampler(data_source, batch_size, n_ins)
