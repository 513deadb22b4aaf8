"""Name → class registries with friendly errors.

A registry maps a string (by default the class ``__name__``) to an object so that configs can
name trainers, datasets and evaluators. A miss names the closest registered key, because a typo in
a sweep script should cost seconds, not a traceback hunt.
"""
from __future__ import annotations

import difflib
from typing import Any, Callable, Dict, Iterable, List, Optional

__all__ = ["Registry", "check_availability", "closest_name"]


def closest_name(requested: str, available: Iterable[str]) -> Optional[str]:
    """Return the available name most similar to ``requested`` (case-insensitive), or None."""
    available = list(available)
    if not available:
        return None
    lowered = {a.lower(): a for a in available}
    if requested.lower() in lowered:
        return lowered[requested.lower()]
    hits = difflib.get_close_matches(requested.lower(), list(lowered), n=1, cutoff=0.0)
    return lowered[hits[0]] if hits else None


def check_availability(requested: str, available: Iterable[str]) -> None:
    """Raise ``ValueError`` naming the closest valid choice when ``requested`` is not available."""
    available = list(available)
    if requested not in available:
        hint = closest_name(requested, available)
        suggestion = f' Did you mean "{hint}"?' if hint else ""
        raise ValueError(
            f'"{requested}" is not one of the {len(available)} available choices.{suggestion}'
            f" Available: {', '.join(sorted(available))}"
        )


class RegistryKeyError(KeyError):
    """KeyError whose message is printed verbatim (KeyError normally repr()s its argument)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class DuplicateNameError(RegistryKeyError):
    """A second registration of a name: ``name``, the module of the first one (``first_module``) and of
    the one refused (``second_module``)."""

    def __init__(self, message: str, name: str = "", first_module: str = "", second_module: str = "") -> None:
        super().__init__(message)
        self.name, self.first_module, self.second_module = name, first_module, second_module


class Registry:
    """A named mapping from strings to classes or functions.

    Example::

        TRAINER_REGISTRY = Registry("TRAINER")

        @TRAINER_REGISTRY.register()
        class MyTrainer(TrainerX): ...

        TRAINER_REGISTRY.get("MyTrainer")
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._obj_map: Dict[str, Any] = {}

    def _do_register(self, name: str, obj: Any, force: bool = False) -> None:
        if name in self._obj_map and not force:
            first = getattr(self._obj_map[name], "__module__", None)  # which file took the name: named, so a
            # trainer dropped in under another file name is not mistaken for the project's file that fails
            raise DuplicateNameError(
                f'An object named "{name}" was already registered in the "{self._name}" registry'
                + (f" (by {first})" if first else ""), name=name, first_module=first or "",
                second_module=getattr(obj, "__module__", "") or "",
            )
        self._obj_map[name] = obj

    def register(self, obj: Any = None, force: bool = False, name: Optional[str] = None) -> Any:
        """Register ``obj`` under ``name`` (default: ``obj.__name__``); usable as a decorator."""
        if obj is None:

            def wrapper(fn_or_class: Callable) -> Callable:
                self._do_register(name or fn_or_class.__name__, fn_or_class, force=force)
                return fn_or_class

            return wrapper
        self._do_register(name or obj.__name__, obj, force=force)
        return obj

    def get(self, name: str) -> Any:
        if name not in self._obj_map:
            hint = closest_name(name, self._obj_map)
            suggestion = f' Did you mean "{hint}"?' if hint else ""
            raise RegistryKeyError(
                f'Unknown {self._name.lower()} "{name}".{suggestion} '
                f"Registered: {', '.join(sorted(self._obj_map))}"
            )
        return self._obj_map[name]

    def registered_names(self) -> List[str]:
        return list(self._obj_map.keys())

    def __contains__(self, name: str) -> bool:
        return name in self._obj_map

    def __len__(self) -> int:
        return len(self._obj_map)

    def __repr__(self) -> str:
        return f"Registry(name={self._name!r}, items={sorted(self._obj_map)})"
