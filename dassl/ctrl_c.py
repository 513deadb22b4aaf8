"""Ctrl-C while a program is still loading: one line, not a traceback from deep inside torch.

Its own module, importing only ``signal`` and ``sys``: an entry point imports it first, so the window in
which a Ctrl-C still meets Python's default handler is the interpreter's own start-up (a Ctrl-C during
``dassl.cli``'s imports of argparse and logging gave a traceback).
"""
from __future__ import annotations

import signal
import sys
from types import FrameType
from typing import Callable, NoReturn, Optional

__all__ = ["quiet_ctrl_c_while_loading", "quiet_ctrl_c_while_package_loads", "exit_with", "INTERRUPTED"]

#: Exit status of a program stopped by Ctrl-C (128 + SIGINT).
INTERRUPTED = 130


def quiet_ctrl_c_while_loading() -> None:
    """Called by an entry point run as the program, before its heavy imports (torch, open_clip: seconds)::

        if __name__ == "__main__":
            from dassl.ctrl_c import quiet_ctrl_c_while_loading

            quiet_ctrl_c_while_loading()

    A Ctrl-C while the program's module-level code still runs (its imports) then prints ``interrupted``
    and exits with status 130, instead of a KeyboardInterrupt traceback from deep inside torch. Anywhere
    else (once ``main`` runs) Ctrl-C raises KeyboardInterrupt as before, for the program's own handling.
    A program started with Ctrl-C ignored (``cmd &`` in a script, ``nohup``) keeps ignoring it."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _interrupt)


def exit_with(main: Callable[[], Optional[int]]) -> NoReturn:
    """The last line of an entry point run as the program: ``sys.exit(main())``, except that a Ctrl-C
    which ``main`` leaves to Python prints ``interrupted`` and exits with status 130 (it was a
    KeyboardInterrupt traceback from wherever the program was: a k-means fit, an image decode, a
    feature batch). Programs that handle Ctrl-C themselves (``train.py``, ``scripts.grid``,
    ``scripts.launch``) never let it reach here. Nothing is written by the interrupted step: every
    output of these programs is written atomically at its end."""
    try:
        code = main()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        code = INTERRUPTED
    sys.exit(code)


def _interrupt(_signum: int, frame: Optional[FrameType]) -> None:
    if _loading(frame):
        print("interrupted", file=sys.stderr, flush=True)
        raise SystemExit(INTERRUPTED)
    raise KeyboardInterrupt


def _loading(frame: Optional[FrameType]) -> bool:
    """Whether ``frame`` is the ``__main__`` module's own top-level code, or an import it is running."""
    stack = []
    while frame is not None:
        stack.append(frame)
        frame = frame.f_back
    stack.reverse()  # outermost first (runpy's frames under -m, then the program's module)
    for i, f in enumerate(stack):
        if f.f_code.co_name == "<module>" and f.f_globals.get("__name__") == "__main__":
            inner = stack[i + 1] if i + 1 < len(stack) else None
            return inner is None or inner.f_code.co_filename.startswith("<frozen importlib")
    # `python -m pkg.mod` before mod's code runs: runpy is importing pkg (its __init__ may load torch)
    return any(f.f_code.co_name == "_run_module_as_main" and f.f_code.co_filename.endswith(("runpy.py", "<frozen runpy>"))
               for f in stack)


def quiet_ctrl_c_while_package_loads() -> None:
    """Called at the top of a package ``__init__`` that imports slow modules (``datasets``: torch): under
    ``python -m package.module`` runpy imports the package before the module's own
    :func:`quiet_ctrl_c_while_loading` can run, and a Ctrl-C there was a traceback through torch. Does
    nothing unless the process is starting a ``-m`` module (``sys.argv[0]`` is still ``-m`` then)."""
    if sys.argv[:1] == ["-m"]:
        quiet_ctrl_c_while_loading()
