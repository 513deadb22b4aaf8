"""Configuration: Dassl's yacs defaults and the engine's additions."""
from .defaults import FINAL_MODEL_CHOICES, get_cfg_default

__all__ = ["get_cfg_default", "FINAL_MODEL_CHOICES"]
