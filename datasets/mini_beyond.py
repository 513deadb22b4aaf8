"""Mini-Beyond: the five emoji domains built by ``python -m tools.mini_beyond build --root DIR``.

They use the exact LAION-Beyond layout (``MiniAnimals<n>_OOP/`` ...), so each is the LAION-Beyond
loader with its own prefix and hint. The OOP classes are provably absent from the pre-training
captions of the shipped ``mini-clip`` weights (see ``tools/mini_beyond/``).
"""
from __future__ import annotations

from dassl.data.datasets.build import DATASET_REGISTRY

from .laion_beyond import LaionBeyond


@DATASET_REGISTRY.register()
class MiniAnimals(LaionBeyond):
    prefix = "MiniAnimals"
    hint = "animal"


@DATASET_REGISTRY.register()
class MiniFood(LaionBeyond):
    prefix = "MiniFood"
    hint = "food"


@DATASET_REGISTRY.register()
class MiniPlants(LaionBeyond):
    prefix = "MiniPlants"
    hint = "plant"


@DATASET_REGISTRY.register()
class MiniAttire(LaionBeyond):
    prefix = "MiniAttire"
    hint = "clothing"


@DATASET_REGISTRY.register()
class MiniTransport(LaionBeyond):
    prefix = "MiniTransport"
    hint = "vehicle"
