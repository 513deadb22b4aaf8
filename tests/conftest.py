"""Shared test set-up: offline, CPU, few threads, the repository root on sys.path, the shared toy data.

Plain helpers (cfgs, trainers, runs, the colour-square toys) live in ``tests/helpers.py``.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.pop("FSNL_OVERWRITE", None)  # a --force launcher's switch (dassl.results.OVERWRITE_ENV); tests set it themselves

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from clip import clip as oai  # noqa: E402

#: torch threads per test process: at most 2, and under pytest-xdist (``-n N``) the cores shared among the
#: N workers (two processes of 2 threads each on 2 cores ran about twice as slow)
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(int(os.environ.get("TEST_NUM_THREADS", max(1, min(2, (os.cpu_count() or 1) // _WORKERS)))))


@pytest.fixture(scope="session", autouse=True)
def eval_feature_cache_dir(tmp_path_factory):
    """The on-disk evaluation feature cache of every test (and train.py subprocess) lives in the
    session's temporary folder, never in the user's ``~/.cache/fsnl``."""
    path = tmp_path_factory.mktemp("fsnl_cache")
    previous = os.environ.get("FSNL_CACHE_DIR")
    os.environ["FSNL_CACHE_DIR"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("FSNL_CACHE_DIR", None)
    else:
        os.environ["FSNL_CACHE_DIR"] = previous


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory):
    """The toy LAION-Beyond benchmark (every toy domain), built once per session.

    Shared read-only: tests that edit split files, delete images or inspect few-shot cache files
    build or copy a private root instead. Few-shot caches that runs write here are deterministic.
    """
    from datasets.make_toy import TOY_CLASSES, make_toy

    root = tmp_path_factory.mktemp("toy_shared")
    return root, make_toy(str(root), domains=tuple(TOY_CLASSES))


@pytest.fixture(scope="session")
def toy_root(toy_data) -> Path:
    return toy_data[0]


@pytest.fixture(scope="session")
def toy_info(toy_data) -> dict:
    """``make_toy``'s description of ``toy_root``: ``{domain: {subset: {dir, split_file, classnames, ...}}}``."""
    return toy_data[1]


def _drop_handlers_added_since(handlers: list) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
            h.close()


@pytest.fixture
def drop_new_log_handlers():
    """``train.main`` tees the log into each output dir: close the handlers a test added to the root
    logger when it ends (modules that run ``train.cli`` use it with ``autouse``)."""
    handlers = list(logging.getLogger().handlers)
    yield
    _drop_handlers_added_since(handlers)


@pytest.fixture(autouse=True)
def no_console_handler_outlives_its_test(request):
    """An in-process ``train.cli`` binds the console handler to the ``sys.stdout`` of its test, which
    ``capsys`` closes at the end: the next test's first log record, if emitted before its own run
    rebinds the handler, printed "--- Logging error ---" and a traceback into that test's stderr
    (which order under ``-n 2`` decided). Every test drops the handlers it added."""
    handlers = list(logging.getLogger().handlers)
    yield
    _drop_handlers_added_since(handlers)


@pytest.fixture(scope="module")
def tiny_home(tmp_path_factory) -> Path:
    """A home folder whose ``~/.cache/clip`` holds the ``openai-tiny`` weights (the seeded init the
    OpenAI-CLIP API writes for a repository model), for the tests of that API and its descendants."""
    home = tmp_path_factory.mktemp("home")
    oai._download(oai._MODELS["openai-tiny"], root=str(home / ".cache" / "clip"))
    return home


@pytest.fixture()
def home(tiny_home, monkeypatch) -> Path:
    """``HOME`` set to :func:`tiny_home`, without a ``CLIP_WEIGHTS`` override."""
    monkeypatch.setenv("HOME", str(tiny_home))
    monkeypatch.delenv(oai.WEIGHTS_ENV, raising=False)
    return tiny_home
