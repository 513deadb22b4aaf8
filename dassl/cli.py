"""The project's one convention for command-line mistakes, for every entry point's argument parser.

A user mistake ends in one line that starts with ``error:`` and says what to fix, exit code 2 (the
code launchers treat as deterministic, never retried). argparse's own errors -- a missing required
option, an invalid choice, a value that is not a number -- printed a usage block and then
``prog: error: ...``; :class:`ArgumentParser` prints them as that one line. Kept free of torch
imports: ``import dassl`` loads nothing optional (B34).
"""
from __future__ import annotations

import argparse
from typing import NoReturn

__all__ = ["ArgumentParser"]


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors are ``error: <message>; see <prog> --help``
    (one line on stderr, exit 2). Sub-parsers made by ``add_subparsers`` are of the same class."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message}; see {self.prog} --help\n")
