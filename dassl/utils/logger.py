"""Run logging: every logger in the process writes to stdout and to ``<OUTPUT_DIR>/log.txt``.

The reference tee'd ``sys.stdout``; here the root logger gets two handlers instead, so modules
keep using ``logging.getLogger(__name__)`` and their lines land in the run's log file.
"""
from __future__ import annotations

import logging
import os.path as osp
import sys
import time
from typing import Optional

from .tools import mkdir_if_missing

__all__ = ["setup_logger"]

_HANDLER_TAG = "_dassl_run_handler"


class _PlainFormatter(logging.Formatter):
    """INFO lines are printed verbatim (regex parsers read ``* accuracy: ..%``); other levels
    carry their level name so warnings stand out."""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.exc_info:
            msg = msg + "\n" + self.formatException(record.exc_info)
        if record.levelno == logging.INFO:
            return msg
        return f"{record.levelname}: {msg}"


def _log_file_for(output: str) -> str:
    if output.endswith(".txt") or output.endswith(".log"):
        return output
    return osp.join(output, "log.txt")


def setup_logger(output: Optional[str] = None, level: int = logging.INFO) -> Optional[str]:
    """Send log records to stdout and, when ``output`` is given, to its ``log.txt``.

    An existing ``log.txt`` is kept and a time-stamped sibling is used (as Dassl does). Calling it
    again for the same directory in one process keeps the current file instead of opening another.
    Returns the path of the log file (None without ``output``).
    """
    root = logging.getLogger()
    root.setLevel(level)
    ours = [h for h in root.handlers if getattr(h, _HANDLER_TAG, False)]

    wanted = _log_file_for(output) if output else None
    current = None
    for h in ours:
        if isinstance(h, logging.FileHandler):
            current = h
    if wanted is not None and current is not None and getattr(current, "_dassl_requested", None) == osp.abspath(wanted):
        return current.baseFilename

    for h in ours:
        root.removeHandler(h)
        h.close()

    formatter = _PlainFormatter()
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(formatter)
    setattr(console, _HANDLER_TAG, True)
    root.addHandler(console)
    logging.captureWarnings(True)

    if wanted is None:
        return None
    mkdir_if_missing(osp.dirname(osp.abspath(wanted)))
    fpath = wanted
    if osp.exists(fpath):
        fpath += time.strftime("-%Y-%m-%d-%H-%M-%S")
    file_handler = logging.FileHandler(fpath, encoding="utf-8")
    file_handler.setFormatter(formatter)
    setattr(file_handler, _HANDLER_TAG, True)
    file_handler._dassl_requested = osp.abspath(wanted)  # type: ignore[attr-defined]
    root.addHandler(file_handler)
    return file_handler.baseFilename
