"""The project's one convention for command-line mistakes, for every entry point's argument parser.

A user mistake ends in one line that starts with ``error:`` and says what to fix, exit code 2 (the
code launchers treat as deterministic, never retried). argparse's own errors -- a missing required
option, an invalid choice, a value that is not a number -- printed a usage block and then
``prog: error: ...``; :class:`ArgumentParser` prints them as that one line. Kept free of torch
imports: ``import dassl`` loads nothing optional (B34).
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, NoReturn

__all__ = ["ArgumentParser", "console_logging", "non_negative_int"]

#: Namespace attribute naming the parser whose arguments were left over (removed by ``parse_args``).
_EXTRAS_PROG = "_cli_unrecognized_by"


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors are ``error: <message>; see <prog> --help``
    (one line on stderr, exit 2). Sub-parsers made by ``add_subparsers`` are of the same class. Without
    an explicit ``prog``, a module run with ``python -m pkg.mod`` is named so (argparse said ``mod.py``,
    which may name another file: ``benchmarks/linear_probe.py`` vs ``lpclip/linear_probe.py``), and a
    script run by path as typed (``python train.py``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if not args and kwargs.get("prog") is None:
            caller = sys._getframe(1).f_globals  # the module that builds the parser
            name = str(caller.get("__name__", ""))
            if name == "__main__":  # run as a program: its module name when run with -m, else argparse's
                name = str(getattr(caller.get("__spec__"), "name", "") or "")
            if name:
                kwargs["prog"] = "python -m " + name.removesuffix(".__main__")
            elif sys.argv and sys.argv[0]:  # run by path: the command as typed (argparse kept the basename)
                kwargs["prog"] = "python " + sys.argv[0]
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        namespace, extras = super().parse_known_args(args, namespace)
        if extras and not hasattr(namespace, _EXTRAS_PROG):
            # the innermost parser that met them: a sub-command's leftovers reach the top level, whose
            # --help would not list the sub-command's options
            setattr(namespace, _EXTRAS_PROG, self.prog)
        return namespace, extras

    def parse_args(self, args: Any = None, namespace: Any = None) -> Any:
        namespace, extras = self.parse_known_args(args, namespace)
        prog = vars(namespace).pop(_EXTRAS_PROG, self.prog)
        if extras:
            self.exit(2, f"error: unrecognized arguments: {' '.join(extras)}; see {prog} --help\n")
        return namespace

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message}; see {self.prog} --help\n")


def _int(text: str) -> int:
    """An option's integer, or argparse's "invalid int value" for anything else."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None


def non_negative_int(text: str) -> int:
    """``type=`` of an option that counts something, 0 meaning "the default" or "all": a negative value
    is argparse's one-line error (``--max-per-class -1`` sampled nothing, or everything, silently)."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value}: must be >= 0")
    return value


#: The largest seed NumPy and scikit-learn take (``random_state`` is a 32-bit unsigned int).
MAX_SEED = 2**32 - 1


def rng_seed(text: str) -> int:
    """``type=`` of a ``--seed`` that reaches NumPy or scikit-learn (k-means, t-SNE): outside
    0..2**32-1 it was their traceback after the features were computed, now argparse's one line."""
    value = _int(text)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"{value}: must be in 0..{MAX_SEED}")
    return value


def console_logging(*names: str, fmt: str = "%(message)s") -> None:
    """A launcher's console: INFO lines of its own loggers ``names``, warnings only from the rest. Its
    checks build every job's config to compute the fingerprint, and the config code's INFO lines (which
    weights a default resolved to) are about no job: they came out before the launcher's one
    ``error:`` line."""
    logging.basicConfig(level=logging.WARNING, format=fmt)
    for name in names:
        logging.getLogger(name).setLevel(logging.INFO)
