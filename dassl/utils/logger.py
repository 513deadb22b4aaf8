"""Run logging: every logger in the process writes to ``<OUTPUT_DIR>/log.txt`` and to stdout.

The reference tee'd ``sys.stdout``; here the root logger gets two handlers instead, so modules
keep using ``logging.getLogger(__name__)`` and their lines land in the run's log file.

The console has two modes. ``console="all"`` (the default, and ``train.py --verbose``) prints every
record as before. ``console="summary"`` (``train.py``'s default) keeps the console for what a person
watching a sweep needs: warnings and errors of the project's own loggers and the records logged with
``extra={"console": True}`` (one line per finished run); ``extra={"console": False}`` keeps a warning or
error in ``log.txt`` when the caller prints its own line for it. Everything else -- the config dump, per-batch
progress, open_clip's INFO lines (logged on the root logger), Python warnings -- goes to ``log.txt``
only, which keeps Dassl's ``* accuracy: X%`` lines for regex parsers.

``log.txt`` never loses lines silently: a write that fails (full disk, the file gone read-only) raises
a :class:`~dassl.utils.tools.WriteError` naming the file and its directory out of the logging call
(the standard handler printed a "--- Logging error ---" traceback to stderr and went on without the
line).
"""
from __future__ import annotations

import logging
import os.path as osp
import sys
import time
from typing import Optional

from .tools import WriteError, absolute_path, mkdir_if_missing, write_error

__all__ = ["setup_logger", "close_log_file", "CONSOLE_MODES"]

_HANDLER_TAG = "_dassl_run_handler"
CONSOLE_MODES = ("all", "summary")
#: Loggers whose records stay out of a ``summary`` console below ERROR (third-party chatter).
_QUIET_LOGGERS = ("root", "py.warnings")


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


class _SummaryFilter(logging.Filter):
    """What a ``summary`` console shows: flagged records, and the project's warnings and errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        flag = getattr(record, "console", None)
        if flag is not None:
            return bool(flag)
        if record.levelno >= logging.ERROR:
            return True
        return record.levelno >= logging.WARNING and record.name.split(".")[0] not in _QUIET_LOGGERS


class _RunFileHandler(logging.FileHandler):
    """A FileHandler that fails loudly: a record it cannot write raises a WriteError out of the
    logging call (and the handler detaches itself, so reporting that error cannot fail again)."""

    def handleError(self, record: logging.LogRecord) -> None:
        err = sys.exc_info()[1]
        logging.getLogger().removeHandler(self)
        if isinstance(err, OSError):
            raise write_error(self.baseFilename, err, what="append to the log file") from err
        super().handleError(record)


def log_file_for(output: str) -> str:
    """The log file :func:`setup_logger` appends to (when it exists, a new time-stamped sibling) for
    ``output``: ``<output>/log.txt``, or ``output`` itself when it names a .txt or .log file."""
    if output.endswith(".txt") or output.endswith(".log"):
        return output
    return osp.join(output, "log.txt")


def setup_logger(output: Optional[str] = None, level: int = logging.INFO, console: str = "all") -> Optional[str]:
    """Send log records to stdout and, when ``output`` is given, to its ``log.txt``.

    An existing ``log.txt`` is kept and a new time-stamped sibling is used (as Dassl does; a counter
    is added when that name exists too). Calling it
    again for the same directory and console mode in one process keeps the current file instead of
    opening another. ``console`` is ``all`` or ``summary`` (see the module docstring). Returns the
    path of the log file (None without ``output``).
    """
    if console not in CONSOLE_MODES:
        raise ValueError(f"console must be one of {CONSOLE_MODES}, got {console!r}")
    root = logging.getLogger()
    root.setLevel(level)
    ours = [h for h in root.handlers if getattr(h, _HANDLER_TAG, False)]

    wanted = log_file_for(output) if output else None
    current = None
    for h in ours:
        if isinstance(h, logging.FileHandler):
            current = h
    same_console = all(getattr(h, "_dassl_console", "all") == console for h in ours
                       if not isinstance(h, logging.FileHandler))
    if (wanted is not None and current is not None and same_console
            and getattr(current, "_dassl_requested", None) == absolute_path(wanted)):
        return current.baseFilename

    for h in ours:
        root.removeHandler(h)
        h.close()

    formatter = _PlainFormatter()
    stream = logging.StreamHandler(sys.stdout)
    stream.setFormatter(formatter)
    if console == "summary":
        stream.addFilter(_SummaryFilter())
    setattr(stream, _HANDLER_TAG, True)
    stream._dassl_console = console  # type: ignore[attr-defined]
    root.addHandler(stream)
    logging.captureWarnings(True)

    if wanted is None:
        return None
    fpath = wanted = absolute_path(wanted)  # logging.FileHandler folds '..' lexically (see absolute_path)
    if osp.exists(fpath):
        stamped = fpath + time.strftime("-%Y-%m-%d-%H-%M-%S")
        fpath, n = stamped, 1
        while osp.exists(fpath):  # two runs in the same second must not share (append to) one file
            fpath, n = f"{stamped}-{n}", n + 1
    try:
        mkdir_if_missing(osp.dirname(wanted))
        file_handler = _RunFileHandler(fpath, encoding="utf-8")
    except OSError as e:
        if isinstance(e, WriteError):
            raise
        raise write_error(fpath, e, what="open the log file") from e
    file_handler.setFormatter(formatter)
    setattr(file_handler, _HANDLER_TAG, True)
    file_handler._dassl_requested = wanted  # type: ignore[attr-defined]
    root.addHandler(file_handler)
    return file_handler.baseFilename


def close_log_file() -> None:
    """Detach and close the run's ``log.txt`` handler (the console handler stays): what a run that
    removes its own folder after a failed start calls first."""
    root = logging.getLogger()
    for h in [h for h in root.handlers if getattr(h, _HANDLER_TAG, False) and isinstance(h, logging.FileHandler)]:
        root.removeHandler(h)
        h.close()
