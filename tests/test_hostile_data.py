"""Hostile datasets (issue 12): each case builds one bad input on the toy benchmark and asserts

* ``train.py``: exit code 2 and exactly one ``error:`` line naming the file / record, no traceback,
  and, for everything detectable from the split file and the folder listing, no training step;
* ``datasets.check``: the problem listed with the same names (exit 1, never "All ... OK");
* that no file outside the dataset root was opened (an audit hook records every ``open``,
  ``os.scandir`` and ``os.listdir``);
* that no finished file was lost or changed (every file of the dataset root and of the "outside"
  folder is byte-identical afterwards).

The cases run ``train.cli`` / ``datasets.check.main`` in process (a few seconds for the whole
suite); two cases run the real command lines in subprocesses, with the audit hook installed by a
``sitecustomize.py`` put first on ``PYTHONPATH``.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest

import train
from dassl.utils import setup_logger
from datasets import check
from datasets.make_toy import make_toy
from tests.helpers import REPO, train_argv

OOP_DIR = "Animals5_OOP"
IP_DIR = "Animals3_IP"
FIRST = "giant anteater"  # class of train['0'] and test['0'] (label 0)
COUNTS = {"num_train": 3, "num_val": 1, "num_test": 2}  # images per class: a small toy copies fast
# test['0']: the test split is always read in full (image numbers run on through train, val, test).
FIRST_IMAGE = f"giant_anteater_{COUNTS['num_train'] + COUNTS['num_val']:03d}.jpg"
AUDITED = ("open", "os.scandir", "os.listdir")


# ----------------------------------------------------------------------------------- the set-up
class OpenRecorder:
    """An audit hook (installed once: hooks cannot be removed) that records paths while active."""

    def __init__(self) -> None:
        self.paths: Optional[List[str]] = None

    def __call__(self, event: str, args: Any) -> None:
        if self.paths is not None and event in AUDITED and args and isinstance(args[0], (str, bytes, os.PathLike)):
            self.paths.append(os.path.abspath(os.fsdecode(args[0])))

    @contextmanager
    def recording(self) -> Iterator[List[str]]:
        self.paths = []
        try:
            yield self.paths
        finally:
            self.paths = None


@pytest.fixture(scope="session")
def opens() -> OpenRecorder:
    recorder = OpenRecorder()
    sys.addaudithook(recorder)
    return recorder


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hostile") / "root"
    make_toy(str(root), domains=("Animals92_42",), **COUNTS)
    return root


@dataclass
class World:
    root: Path
    outside: Path
    out: Path

    def split_file(self, subset_dir: str = OOP_DIR) -> Path:
        return self.root / subset_dir / f"split_Xin_{subset_dir}.json"

    def edit(self, fn: Callable[[Dict[str, Any]], None], subset_dir: str = OOP_DIR) -> None:
        path = self.split_file(subset_dir)
        data = json.loads(path.read_text(encoding="utf-8"))
        fn(data)
        path.write_text(json.dumps(data), encoding="utf-8")

    def image(self, classname: str = FIRST, name: str = FIRST_IMAGE, subset_dir: str = OOP_DIR) -> Path:
        return self.root / subset_dir / "images" / classname / name

    def snapshot(self) -> Dict[str, str]:
        """sha1 of every regular file under the root and the outside folder (symlinks not followed)."""
        out = {}
        for base in (self.root, self.outside):
            for dirpath, _, files in os.walk(base):
                for f in files:
                    p = os.path.join(dirpath, f)
                    if os.path.isfile(p) and not os.path.islink(p):
                        out[p] = hashlib.sha1(Path(p).read_bytes()).hexdigest()
        return out


@pytest.fixture
def world(pristine, tmp_path) -> World:
    root = tmp_path / "root"
    shutil.copytree(pristine, root, symlinks=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    # What a traversal would read: a perfectly valid image (and copies of a class folder).
    shutil.copy(root / OOP_DIR / "images" / FIRST / "giant_anteater_000.jpg", outside / "secret.jpg")
    for p in (root / OOP_DIR / "images" / "ant").iterdir():
        shutil.copy(p, outside / p.name)
    return World(root, outside, tmp_path / "out")


@dataclass
class Outcome:
    rc: int
    stdout: str
    stderr: str
    opened: List[str]

    @property
    def errors(self) -> List[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error:")]


def run_train(world: World, opens: OpenRecorder, capsys, *opts: str, shots: Optional[int] = 2,
              extra: tuple = ()) -> Outcome:
    argv = train_argv(world.root, world.out, "FSNL_openclip", "OPTIM.MAX_EPOCH", "1", *opts, shots=shots,
                      extra=extra)
    capsys.readouterr()
    setup_logger()  # rebind the console handler of an earlier in-process run to this test's stdout
    with opens.recording() as opened:
        rc = train.cli(argv)
    cap = capsys.readouterr()
    return Outcome(rc, cap.out, cap.err, list(opened))


def run_check(world: World, opens: OpenRecorder) -> Outcome:
    stream = io.StringIO()
    with opens.recording() as opened:
        rc = check.main(["--root", str(world.root), "--domains", "Animals92_42", "--workers", "1",
                         "--no-progress"], stream=stream)
    return Outcome(rc, stream.getvalue(), "", list(opened))


def assert_nothing_outside(world: World, outcome: Outcome) -> None:
    outside = os.path.realpath(world.outside) + os.sep
    bad = [p for p in outcome.opened if os.path.realpath(p).startswith(outside)]
    assert not bad, f"opened outside the dataset root: {bad[:5]}"


def assert_nothing_lost(before: Dict[str, str], world: World) -> None:
    after = world.snapshot()
    changed = [p for p, h in before.items() if after.get(p) != h]
    assert not changed, f"lost or changed: {changed[:5]}"


def assert_one_error(outcome: Outcome, needles: List[str]) -> None:
    assert outcome.rc == 2, (outcome.rc, outcome.stderr[-2000:])
    assert len(outcome.errors) == 1, outcome.stderr
    assert "Traceback" not in outcome.stderr and "Traceback" not in outcome.stdout
    message = outcome.stderr[outcome.stderr.index("error:"):]
    assert "\n" not in message.strip(), message  # one line (a split file's problems took 22)
    for needle in needles:
        assert needle in message, (needle, message)


def assert_not_trained(world: World) -> None:
    """The error came before the first step: no checkpoint, no results."""
    assert not (world.out / "results.json").exists()
    assert not list(world.out.rglob("model.pth.tar-*"))


# ----------------------------------------------------------------------------------- the inputs
def _set(split: str, key: str, **fields: Any) -> Callable[[World], None]:
    def mutate(w: World) -> None:
        w.edit(lambda d: d[split][key].update(fields))
    return mutate


def _copy_record(src: tuple, dst: tuple, **fields: Any) -> Callable[[World], None]:
    def mutate(w: World) -> None:
        def fn(d):
            d[dst[0]][dst[1]] = {**d[src[0]][src[1]], **fields}
        w.edit(fn)
    return mutate


def _rename_class(old: str, new: str) -> Callable[[World], None]:
    def mutate(w: World) -> None:
        images = w.root / OOP_DIR / "images"
        (images / old).rename(images / new)

        def fn(d):
            for split in d.values():
                for item in split.values():
                    if item["classname"] == old:
                        item["classname"] = new
        w.edit(fn)
    return mutate


def _replace_image(make: Callable[[World, Path], None]) -> Callable[[World], None]:
    def mutate(w: World) -> None:
        path = w.image()
        path.unlink()
        make(w, path)
    return mutate


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` 1-bit pixels (a few bytes: a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def _truncate(w: World, path: Path) -> None:
    raw = (w.outside / "secret.jpg").read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def _repeat_first_train_key(w: World) -> None:
    """``"0"`` twice in the train object (the second copy points at another image)."""
    data = json.loads(w.split_file().read_text(encoding="utf-8"))
    first = json.dumps(data["train"]["0"])
    other = json.dumps({**data["train"]["0"], "image_name": "giant_anteater_001.jpg"})
    text = json.dumps(data)
    head = '{"train": {"0": ' + first
    assert text.startswith(head)
    w.split_file().write_text('{"train": {"0": ' + other + ', "0": ' + first + text[len(head):], encoding="utf-8")


def _remove_ip(w: World) -> None:
    shutil.rmtree(w.root / IP_DIR)


@dataclass
class Case:
    id: str
    mutate: Callable[[World], None]
    needles: List[str]  # in train.py's error and in datasets.check's report
    when: str = "build"  # "build": before any step; "run": when the image is read (here: at test time)
    check_needles: Optional[List[str]] = None  # datasets.check, when it words it differently

    def __repr__(self) -> str:
        return self.id


SPLIT = str(Path(OOP_DIR) / f"split_Xin_{OOP_DIR}.json")
CASES = [
    Case("image_name_traversal", _set("train", "0", image_name="../../../../outside/secret.jpg"),
         [SPLIT, "train['0']", "contains '..'"]),
    Case("image_name_absolute", _set("train", "0", image_name="/etc/passwd"),
         [SPLIT, "train['0']", "absolute path"]),
    Case("image_name_absolute_outside", lambda w: _set("train", "0", image_name=str(w.outside / "secret.jpg"))(w),
         [SPLIT, "train['0']", "absolute path"]),
    Case("classname_traversal", _set("train", "0", classname="../../../outside", image_name="secret.jpg"),
         [SPLIT, "train['0']", "contains '..'"]),
    Case("classname_deep_traversal", _set("test", "3", classname="../../../../outside"),
         [SPLIT, "test['3']", "contains '..'"]),
    Case("image_name_nul", _set("val", "1", image_name="a\x00b.jpg"), [SPLIT, "val['1']", "NUL"]),
    Case("image_name_dot", _set("train", "2", image_name="."), [SPLIT, "train['2']", "names no file"]),
    Case("symlinked_image", _replace_image(lambda w, p: p.symlink_to(w.outside / "secret.jpg")),
         [SPLIT, FIRST_IMAGE, "symlink resolves outside"]),
    Case("symlinked_class_folder",
         lambda w: (shutil.rmtree(w.root / OOP_DIR / "images" / "ant"),
                    (w.root / OOP_DIR / "images" / "ant").symlink_to(w.outside)),
         [SPLIT, "ant_000.jpg", "its folder resolves outside"]),
    Case("dangling_symlink", _replace_image(lambda w, p: p.symlink_to(p.parent / "gone.jpg")),
         [SPLIT, FIRST_IMAGE, "dangling symlink"]),
    Case("directory_as_image", _replace_image(lambda w, p: p.mkdir()), [SPLIT, FIRST_IMAGE, "not a regular file"]),
    Case("fifo_as_image", _replace_image(lambda w, p: os.mkfifo(p)), [SPLIT, FIRST_IMAGE, "not a regular file"]),
    # one line for train.py (the first of the two problems, then "and 1 more"), both for datasets.check
    Case("huge_label", _set("train", "0", label=10**12),
         [SPLIT, "2 problem(s)", "has 2 labels: 1000000000000", "and 1 more"],
         check_needles=[SPLIT, "has 2 labels: 1000000000000", "contiguous", "max 1000000000000"]),
    Case("duplicate_record", _copy_record(("train", "0"), ("train", "1")),
         [SPLIT, "duplicate record", "train['1'] = train['0']"]),
    Case("duplicate_after_normpath", _copy_record(("train", "0"), ("train", "1"), image_name="./giant_anteater_000.jpg"),
         [SPLIT, "duplicate record", "train['1'] = train['0']"]),
    Case("train_test_overlap", _copy_record(("train", "0"), ("test", "0")),
         [SPLIT, "in both train and test", "test['0'] = train['0']"]),
    Case("val_test_overlap", _copy_record(("val", "0"), ("test", "5")), [SPLIT, "in both val and test", "test['5']"]),
    Case("name_normalises_to_nothing", _rename_class("sun_bear", "___"),
         [SPLIT, "'___'", "normalises to an empty name"]),
    Case("names_collide", _rename_class("elephant shrew", "Sun Bear"),
         [SPLIT, "'Sun Bear'", "'sun_bear'", "collide after normalisation"]),
    # A record's label moved to a new number: the name has two labels (not a name colliding with itself).
    Case("label_mapped_to_second_number", _set("train", "0", label=5),
         [SPLIT, f"classname '{FIRST}' has 2 labels", "5 (first in train['0'])"]),
    # json.loads keeps the last of two records under one key: refused, naming the key.
    Case("repeated_json_key", lambda w: _repeat_first_train_key(w),
         [SPLIT, "repeated JSON key", "'0' in train"]),
    Case("ip_split_traversal",
         lambda w: w.edit(lambda d: d["test"]["0"].update(image_name="../../../../outside/secret.jpg"), IP_DIR),
         [str(Path(IP_DIR) / f"split_Xin_{IP_DIR}.json"), "test['0']", "contains '..'"]),
    Case("backslash_traversal", _set("train", "0", image_name="..\\..\\..\\..\\outside\\secret.jpg"),
         [SPLIT, "train['0']", "contains '..'"]),
    Case("symlink_loop", _replace_image(lambda w, p: p.symlink_to(p)), [SPLIT, FIRST_IMAGE, "dangling symlink"]),
    Case("split_file_symlinked_outside",
         lambda w: (shutil.copy(w.split_file(), w.outside / "split.json"), w.split_file().unlink(),
                    w.split_file().symlink_to(w.outside / "split.json")),
         [SPLIT, "outside its subset folder"]),
    Case("deeply_nested_json", lambda w: w.split_file().write_text("[" * 100_000 + "]" * 100_000),
         [SPLIT, "nested too deeply"]),
    Case("undecodable_ip_image",
         lambda w: w.image("zebra", "zebra_004.jpg", IP_DIR).write_bytes(b"\xff\xd8\xff\xe0 garbage"),
         ["zebra_004.jpg", "Cannot decode"], "run"),
    # A newline in a name must not forge a second "error:" line: paths are shown escaped.
    Case("newline_in_image_name", _set("test", "0", image_name="x\nerror: forged.jpg"),
         [SPLIT, "missing", "x\\nerror: forged.jpg"]),
    Case("missing_ip_folder", _remove_ip, ["No IP folder", "Animals"],
         check_needles=["No IP folder"]),
    # an interrupted download: found before training (a test image was found only after it)
    Case("zero_byte_image", _replace_image(lambda w, p: p.write_bytes(b"")), [SPLIT, FIRST_IMAGE, "an empty file"]),
    Case("zero_byte_ip_test_image", lambda w: w.image("zebra", "zebra_004.jpg", IP_DIR).write_bytes(b""),
         ["zebra_004.jpg", "an empty file"]),
    Case("truncated_jpeg", _replace_image(_truncate), [FIRST_IMAGE, "Cannot decode"], "run"),
    Case("text_as_image", _replace_image(lambda w, p: p.write_text("not an image\n")),
         [FIRST_IMAGE, "Cannot decode"], "run"),
    Case("decompression_bomb", _replace_image(lambda w, p: p.write_bytes(_png_header(40000, 40000))),
         [FIRST_IMAGE, "MAX_IMAGE_PIXELS"], "run"),
    # Between PIL's limit and twice it, PIL only warns: still refused.
    Case("decompression_bomb_below_pil_error", _replace_image(lambda w, p: p.write_bytes(_png_header(10000, 10000))),
         [FIRST_IMAGE, "MAX_IMAGE_PIXELS"], "run"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input(case: Case, world: World, opens: OpenRecorder, capsys):
    case.mutate(world)
    before = world.snapshot()

    outcome = run_train(world, opens, capsys)
    assert_one_error(outcome, case.needles)
    if case.when == "build":
        assert_not_trained(world)
        assert "epoch [" not in outcome.stdout
    assert_nothing_outside(world, outcome)
    assert_nothing_lost(before, world)

    report = run_check(world, opens)
    assert report.rc == 1, report.stdout
    assert "OK." not in report.stdout
    for needle in case.check_needles or case.needles:
        needle = "cannot be decoded" if needle == "Cannot decode" else needle
        assert needle in report.stdout, (needle, report.stdout)
    assert_nothing_outside(world, report)
    assert_nothing_lost(before, world)


def test_clean_toy_passes_check_and_decodes_in_parallel(world: World, opens: OpenRecorder):
    report = run_check(world, opens)
    assert report.rc == 0 and "All 1 domain(s) OK." in report.stdout
    images = sorted(str(p) for p in (world.root / OOP_DIR / "images").rglob("*.jpg"))
    bad = images[3]
    Path(bad).write_bytes(b"GIF89a broken")
    serial = check.decode_problems(images, workers=1, progress=False)
    parallel = check.decode_problems(images, workers=2, progress=False)
    assert list(serial) == [bad] and serial == parallel


def test_cross_eval_typo_is_caught_before_training(world: World, opens: OpenRecorder, capsys):
    outcome = run_train(world, opens, capsys, "TEST.CROSS_EVAL", "XYZ")
    assert_one_error(outcome, ["TEST.CROSS_EVAL", "'XYZ'"])
    assert_not_trained(world)


def test_all_needs_both_subsets_before_training(world: World, opens: OpenRecorder, capsys):
    """An OOP run cross-evaluating on All validates IP now, not after training."""
    _remove_ip(world)
    outcome = run_train(world, opens, capsys, "TEST.CROSS_EVAL", "All")
    assert_one_error(outcome, ["No IP folder"])
    assert_not_trained(world)


class _Trap:
    """Unpickling this creates a marker file: proof that a pickle was (wrongly) loaded."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_reference_pickled_fewshot_cache_is_ignored(world: World, opens: OpenRecorder, capsys):
    """Issue 14: the reference's ``shot_K-seed_S.pkl`` is detected and ignored with a log line, never unpickled."""
    cache_dir = world.root / OOP_DIR / "split_fewshot"
    cache_dir.mkdir()
    pkl = cache_dir / "shot_2-seed_1.pkl"
    marker = world.out.parent / "unpickled"
    pkl.write_bytes(pickle.dumps({"train": [_Trap(str(marker))], "val": []}))
    outcome = run_train(world, opens, capsys, extra=("--no-train",))
    assert outcome.rc == 0, outcome.stderr
    assert not marker.exists()
    assert str(pkl) not in outcome.opened
    assert f"Ignoring {pkl}: a pickled few-shot cache" in outcome.stdout
    # The run sampled afresh and cached JSON next to it, with integer labels.
    cached = [json.loads(p.read_text()) for p in cache_dir.glob("shot_2-seed_1-*.json")]
    assert len(cached) == 1 and all(isinstance(r["label"], int) for r in cached[0]["train"])
    report = run_check(world, opens)
    assert report.rc == 0 and f"{pkl}: pickled few-shot cache of the reference code" in report.stdout


def test_labels_check_is_linear_in_records():
    """The gap check walks the sorted distinct labels: 10**12 costs what 10 costs."""
    from datasets.laion_beyond import _label_problems

    problems = _label_problems([0, 1, 3, 10**12], "label")
    assert problems == ["labels must be contiguous 0..C-1 (4 distinct, max 1000000000000); missing: 2, 4..999999999999"]
    assert _label_problems(list(range(5)), "label") == []


# ------------------------------------------------------------------ the real command lines
SITECUSTOMIZE = '''
import os, sys
_log = open(os.environ["AUDIT_OPEN_LOG"], "a", buffering=1)
def _hook(event, args):
    if event in {audited!r} and args and isinstance(args[0], (str, bytes, os.PathLike)):
        _log.write(os.path.abspath(os.fsdecode(args[0])) + "\\n")
sys.addaudithook(_hook)
'''


def _start(tmp_path: Path, name: str, argv: List[str]) -> tuple:
    """Start ``python argv`` with the audit hook; returns (process, log of opened paths)."""
    hook_dir = tmp_path / "hook"
    hook_dir.mkdir(exist_ok=True)
    (hook_dir / "sitecustomize.py").write_text(SITECUSTOMIZE.format(audited=AUDITED))
    log = tmp_path / f"opened-{name}.txt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hook_dir), str(REPO)]), "AUDIT_OPEN_LOG": str(log),
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, *argv], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return proc, log


def _finish(started: tuple) -> Outcome:
    proc, log = started
    out, err = proc.communicate(timeout=300)
    opened = log.read_text().splitlines()
    assert opened, "the audit hook did not run"
    return Outcome(proc.returncode, out, err, opened)


@pytest.mark.parametrize("tool", ["train.py", "datasets.check"])
def test_traversal_through_the_command_line(tool: str, world: World, tmp_path: Path):
    """The real ``python train.py`` and ``python -m datasets.check``."""
    _set("train", "0", image_name="../../../../outside/secret.jpg")(world)
    before = world.snapshot()
    if tool == "train.py":
        outcome = _finish(_start(tmp_path, tool, ["train.py", *train_argv(world.root, world.out, "FSNL_openclip")]))
        assert_one_error(outcome, [SPLIT, "train['0']", "contains '..'"])
        assert_not_trained(world)
    else:
        outcome = _finish(_start(tmp_path, tool, ["-m", "datasets.check", "--root", str(world.root), "--no-progress"]))
        assert outcome.rc == 1 and "train['0']" in outcome.stdout and "OK." not in outcome.stdout
    assert_nothing_outside(world, outcome)
    assert_nothing_lost(before, world)


def test_worker_errors_keep_their_one_line_message(tmp_path):
    """With DATALOADER.NUM_WORKERS > 0 torch re-raises a worker's error with the worker traceback in
    its message; the CLI keeps only the original line."""
    from torch._utils import ExceptionWrapper

    from dassl.utils import UnreadableImageError, read_image

    bad = tmp_path / "x.jpg"
    bad.write_bytes(b"")
    try:
        read_image(str(bad))
    except UnreadableImageError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(UnreadableImageError) as info:
        wrapped.reraise()
    assert "Traceback" in str(info.value)
    assert train.error_message(info.value) == f'Cannot decode image "{bad}": cannot identify image file {str(bad)!r}'


def test_label_mapped_twice_names_no_collision(world: World, opens: OpenRecorder, capsys):
    """The label check says what is wrong; the old message also advised renaming a class that
    "collided" with itself after normalisation."""
    _set("train", "0", label=5)(world)
    outcome = run_train(world, opens, capsys)
    assert_one_error(outcome, [SPLIT, f"classname '{FIRST}' has 2 labels"])
    assert "collide" not in outcome.stderr and "rename" not in outcome.stderr


def test_class_without_train_image_is_an_error_for_k_shot(world: World, opens: OpenRecorder, capsys):
    """A K-shot run needs every class to train on something: one line naming the split file and the
    class, before training (it was a warning and the run was filed as K-shot). ``datasets.check``
    and a full-split run keep it a warning."""
    world.edit(lambda d: d.__setitem__("train", {k: v for k, v in d["train"].items() if v["classname"] != "ant"}))
    before = world.snapshot()
    outcome = run_train(world, opens, capsys)
    assert_one_error(outcome, [SPLIT, "'ant'", "no train image", "2-shot run"])
    assert_not_trained(world)
    assert "WARNING" not in outcome.stdout + outcome.stderr
    assert_nothing_lost(before, world)
    report = run_check(world, opens)
    assert report.rc == 0 and "have no train image" in report.stdout
    full = run_train(world, opens, capsys, shots=-1, extra=("--no-train",))
    assert full.rc == 0, full.stderr
    assert_nothing_lost(before, world)


@pytest.mark.parametrize("sub", ["OOP", "All"])
def test_best_val_without_val_images_is_refused(sub: str, world: World, opens: OpenRecorder, capsys):
    """``TEST.FINAL_MODEL best_val`` with no val image used to select the model on the test split
    (one warning; results.json said best_val): one line before training, naming the split files."""
    for subset_dir in (OOP_DIR, IP_DIR):
        world.edit(lambda d: d.__setitem__("val", {}), subset_dir)
    before = world.snapshot()
    outcome = run_train(world, opens, capsys, "TEST.FINAL_MODEL", "best_val", "DATASET.SUB_CLASSES", sub,
                        "TEST.CROSS_EVAL", "()")
    assert_one_error(outcome, ["TEST.FINAL_MODEL best_val needs validation images", SPLIT, "last_step"])
    assert_not_trained(world)
    assert_nothing_lost(before, world)
    ok = run_train(world, opens, capsys, "TEST.FINAL_MODEL", "last_step", "DATASET.SUB_CLASSES", sub,
                   "TEST.CROSS_EVAL", "()", extra=("--no-train",))
    assert ok.rc == 0, ok.stderr


def test_best_val_with_val_images_of_one_subset_only(world: World, opens: OpenRecorder, capsys):
    """The OOP run selects on OOP's val images; an IP subset without any (read by the OOP->IP
    cross-evaluation, which selects nothing) is no reason to refuse it."""
    world.edit(lambda d: d.__setitem__("val", {}), IP_DIR)
    outcome = run_train(world, opens, capsys, "TEST.FINAL_MODEL", "best_val")
    assert outcome.rc == 0, outcome.stderr
    assert (world.out / "results.json").is_file()


# ------------------------------------------- image shapes, images linked across splits, pixel depths
from fractions import Fraction  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from dassl.utils import UnreadableImageError, read_image  # noqa: E402
from dassl.utils.tools import MAX_ASPECT_RATIO  # noqa: E402

IP_SPLIT = str(Path(IP_DIR) / f"split_Xin_{IP_DIR}.json")


def _strip(width: int, height: int) -> Callable[[World, Path], None]:
    """A valid PNG of ``width x height`` (a few KB even at 2,000,000 x 1) under the image's name."""
    def make(w: World, path: Path) -> None:
        Image.new("RGB", (width, height), (90, 120, 30)).save(path, format="PNG")
    return make


def _float_tiff(values: np.ndarray) -> Callable[[World, Path], None]:
    def make(w: World, path: Path) -> None:
        Image.fromarray(values.astype(np.float32)).save(path, format="TIFF")
    return make


def _link(make_link: Callable[[Path, Path], None], pairs: List[tuple], subset_dir: str = OOP_DIR,
          classname: str = FIRST) -> Callable[[World], None]:
    """Replace each ``dst`` image of ``pairs`` by a link to ``src`` (same class folder)."""
    def mutate(w: World) -> None:
        for src, dst in pairs:
            target = w.image(classname, dst, subset_dir)
            target.unlink()
            make_link(w.image(classname, src, subset_dir), target)
    return mutate


def _symlink(src: Path, dst: Path) -> None:
    dst.symlink_to(src.name)  # relative, inside images/: scan_images accepts it


def _hardlink(src: Path, dst: Path) -> None:
    os.link(src, dst)


# Both test images of the class linked to train images: a 2-shot sample of its 3 train images
# always contains at least one of them.
TEST_TO_TRAIN = [("giant_anteater_000.jpg", "giant_anteater_004.jpg"), ("giant_anteater_001.jpg", "giant_anteater_005.jpg")]
LINK_NEEDLES = [SPLIT, "in both train and test", "one file under two names (a symlink or hard link)",
                f"test '{FIRST}/giant_anteater_00", f"= train '{FIRST}/giant_anteater_00"]

LATER_CASES = [
    # resized to INPUT.SIZE it would be 640,000 x 32 pixels (2,000,000 x 1: 64M x 32, a MemoryError)
    Case("very_wide_image", _replace_image(_strip(20_000, 1)), [FIRST_IMAGE, "20000x1", "aspect ratio above 100:1"],
         "run"),
    Case("very_tall_image", _replace_image(_strip(1, 20_000)), [FIRST_IMAGE, "1x20000", "aspect ratio above 100:1"],
         "run"),
    Case("test_images_symlinked_to_train_images", _link(_symlink, TEST_TO_TRAIN), LINK_NEEDLES),
    Case("test_images_hardlinked_to_train_images", _link(_hardlink, TEST_TO_TRAIN), LINK_NEEDLES),
    Case("val_image_hardlinked_to_test_image", _link(_hardlink, [("giant_anteater_004.jpg", "giant_anteater_003.jpg")]),
         [SPLIT, "in both val and test",
          f"test '{FIRST}/giant_anteater_004.jpg' = val '{FIRST}/giant_anteater_003.jpg'"]),
    Case("float_image_out_of_range", _replace_image(_float_tiff(np.linspace(0, 4, 32 * 32).reshape(32, 32))),
         [FIRST_IMAGE, "mode 'F'", "values 0.0..4.0", "pixel range is unknown"], "run"),
]


@pytest.mark.parametrize("case", LATER_CASES, ids=[c.id for c in LATER_CASES])
def test_hostile_shape_link_or_depth(case: Case, world: World, opens: OpenRecorder, capsys):
    """The same contract as :func:`test_hostile_input` (one line, exit 2, nothing outside read,
    nothing lost, ``datasets.check`` lists it) for the image shapes, links and pixel depths."""
    test_hostile_input(case, world, opens, capsys)


def test_ip_test_images_hardlinked_to_oop_train_images_with_all(world: World, opens: OpenRecorder, capsys):
    """``SUB_CLASSES All`` trains on OOP and IP together: an IP test image that is a hard link to an
    OOP train image leaks as much as one within a subset (the paths differ in every part)."""
    for src, dst in (("giant_anteater_000.jpg", "zebra_004.jpg"), ("giant_anteater_001.jpg", "zebra_005.jpg")):
        target = world.image("zebra", dst, IP_DIR)
        target.unlink()
        os.link(world.image(FIRST, src), target)
    before = world.snapshot()
    needles = [SPLIT, IP_SPLIT, "in both train and test", "test 'zebra/zebra_00", f"= train '{FIRST}/giant_anteater_00"]
    outcome = run_train(world, opens, capsys, "DATASET.SUB_CLASSES", "All", "TEST.CROSS_EVAL", "()")
    assert_one_error(outcome, needles)
    assert_not_trained(world)
    assert_nothing_lost(before, world)
    report = run_check(world, opens)
    assert report.rc == 1 and "OK." not in report.stdout
    for needle in needles:
        assert needle in report.stdout, (needle, report.stdout)
    assert_nothing_lost(before, world)


def test_check_reports_the_two_million_pixel_wide_strip(world: World, opens: OpenRecorder):
    """The tester's file: a 2,000,000 x 1 PNG of 6 KB that ``datasets.check`` called OK and
    training blew up on (the check decodes but never resizes, so this size is safe to run here)."""
    _replace_image(_strip(2_000_000, 1))(world)
    assert world.image().stat().st_size < 20_000
    report = run_check(world, opens)
    assert report.rc == 1 and "OK." not in report.stdout
    assert FIRST_IMAGE in report.stdout and "2000000x1" in report.stdout and "aspect ratio above" in report.stdout


@pytest.mark.parametrize("size", [(2_000_000, 1), (1, 400_000), (MAX_ASPECT_RATIO + 1, 1), (2, 2 * MAX_ASPECT_RATIO + 1)])
def test_read_image_refuses_an_absurd_aspect_ratio(size: tuple, tmp_path: Path):
    path = tmp_path / "strip.png"
    Image.new("L", size, 128).save(path)
    with pytest.raises(UnreadableImageError) as info:
        read_image(str(path))
    message = str(info.value)
    assert MAX_ASPECT_RATIO == 100
    assert f'"{path}"' in message and f"{size[0]}x{size[1]} pixels" in message and "above 100:1" in message
    assert "\n" not in message


@pytest.mark.parametrize("size", [(MAX_ASPECT_RATIO, 1), (3, 3 * MAX_ASPECT_RATIO), (64, 48)])
def test_read_image_reads_shapes_up_to_the_bound(size: tuple, tmp_path: Path):
    path = tmp_path / "ok.png"
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    img = read_image(str(path))
    assert img.size == size and np.array_equal(np.asarray(img), pixels)


def _gray(img: Image.Image) -> np.ndarray:
    """The single level of an RGB image read from grayscale (all three channels must agree)."""
    rgb = np.asarray(img)
    assert img.mode == "RGB" and (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    return rgb[..., 0].astype(np.int64)


SIXTEEN = np.arange(65536, dtype=np.int64).reshape(256, 256)  # every 16-bit value once
# round(v / 257) with v / 257 computed exactly (257 is odd: never a tie)
SIXTEEN_AS_8 = np.array([int(Fraction(v, 257) + Fraction(1, 2)) for v in range(65536)]).reshape(256, 256)


@pytest.mark.parametrize("mode,fmt", [("I;16", "PNG"), ("I;16B", "TIFF"), ("I;16L", "TIFF"), ("I", "TIFF")])
def test_read_image_scales_16_bit_images_to_8_bits(mode: str, fmt: str, tmp_path: Path):
    """PIL's ``convert("RGB")`` clips 16-bit levels at 255: the gradient read 99.6% white."""
    path = tmp_path / f"g16.{fmt.lower()}"
    dtype = {"I;16": "<u2", "I;16L": "<u2", "I;16B": ">u2", "I": "<i4"}[mode]
    raw = Image.frombytes(mode, (256, 256), SIXTEEN.astype(dtype).tobytes())
    raw.save(path, format=fmt)
    with Image.open(path) as check_mode:
        assert check_mode.mode in {mode, "I;16"}  # PIL reads little-endian 16-bit TIFF back as I;16
    levels = _gray(read_image(str(path)))
    assert np.array_equal(levels, SIXTEEN_AS_8)
    assert levels[255, 255] == 255 and levels.flat[32896] == 128 and levels.flat[128] == 0 and levels.flat[129] == 1
    assert (levels == 255).mean() < 0.01


def test_read_image_reads_8_bit_levels_in_a_32_bit_image_as_they_are(tmp_path: Path):
    """An int32 TIFF of 8-bit levels (all within 0..255) was divided by 257 as if 16-bit: nearly black."""
    values = (np.arange(64 * 64) % 256).astype("<i4").reshape(64, 64)
    path = tmp_path / "i8.tiff"
    Image.frombytes("I", (64, 64), values.tobytes()).save(path, format="TIFF")
    with Image.open(path) as check_mode:
        assert check_mode.mode == "I"
    assert np.array_equal(_gray(read_image(str(path))), values)


def test_read_image_scales_float_images_in_0_1_to_8_bits(tmp_path: Path):
    """A float TIFF in [0, 1] was read all black (clipped to 0 or 1 of 255)."""
    values = np.concatenate([np.array([0.0, 0.5, 1.0, 0.2, 1 / 255, 0.998]),
                             np.linspace(0, 1, 64 * 64 - 6)]).astype(np.float32).reshape(64, 64)
    path = tmp_path / "f.tiff"
    Image.fromarray(values).save(path, format="TIFF")
    levels = _gray(read_image(str(path)))
    expected = np.array([int(Fraction(float(x)) * 255 + Fraction(1, 2)) for x in values.flat]).reshape(64, 64)
    assert np.array_equal(levels, expected)
    assert list(levels.flat[:6]) == [0, 128, 255, 51, 1, 254]


@pytest.mark.parametrize("mode,values,shown", [
    ("I", [0, 65535, 70000], "values 0..70000"),
    ("I", [-1, 200], "values -1..200"),
    ("F", [0.0, 1.5], "values 0.0..1.5"),
    ("F", [-0.25, 0.5], "values -0.25..0.5"),
    ("F", [0.0, float("nan")], "NaN or infinite"),
    ("F", [0.0, float("inf")], "NaN or infinite"),
])
def test_read_image_refuses_an_unknown_pixel_range(mode: str, values: list, shown: str, tmp_path: Path):
    path = tmp_path / "x.tiff"
    Image.fromarray(np.array([values], dtype=np.int32 if mode == "I" else np.float32)).save(path, format="TIFF")
    with pytest.raises(UnreadableImageError) as info:
        read_image(str(path))
    message = str(info.value)
    assert f'"{path}"' in message and f"mode {mode!r}" in message and shown in message
    assert "pixel range is unknown" in message and "\n" not in message


@pytest.mark.parametrize("mode", ["1", "L", "P", "RGB", "RGBA", "LA", "CMYK"])
def test_read_image_reads_8_bit_images_exactly_as_pil(mode: str, tmp_path: Path):
    """Only the 16-bit and float modes take the new path: every 8-bit mode is PIL's convert as before."""
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)).convert(mode)
    path = tmp_path / ("x.tiff" if mode == "CMYK" else "x.png")
    img.save(path)
    with Image.open(path) as reference:
        expected = reference.convert("RGB")
    got = read_image(str(path))
    assert got.mode == "RGB" and got.size == (40, 24) and got.tobytes() == expected.tobytes()


def _copy_file(src: Path, dst: Path) -> None:
    shutil.copyfile(src, dst)


def test_check_lists_test_images_that_are_copies_of_train_images(world: World, opens: OpenRecorder):
    """A test image that is a byte-for-byte copy of a train image (a separate file, so no link check sees
    it) leaked the training set into the test score with every check passing; ``datasets.check`` hashes
    what it decodes and lists such copies. Links stay the link check's: one problem, not two."""
    _link(_copy_file, TEST_TO_TRAIN)(world)
    before = world.snapshot()
    outcome = run_check(world, opens)
    assert outcome.rc == 1, outcome.stdout
    copies = [ln for ln in outcome.stdout.splitlines() if "byte-for-byte copy" in ln]
    assert len(copies) == 1 and copies[0].startswith("[Animals92_42] 2 image(s)"), outcome.stdout
    for train_name, test_name in TEST_TO_TRAIN:
        assert f"OOP train '{FIRST}/{train_name}' = OOP test '{FIRST}/{test_name}'" in copies[0], copies[0]
    assert_nothing_outside(world, outcome)
    assert_nothing_lost(before, world)
    for path, _ in TEST_TO_TRAIN:  # hard links instead: the link problem only
        target = world.image(FIRST, dict(TEST_TO_TRAIN)[path])
        target.unlink()
        os.link(world.image(FIRST, path), target)
    outcome = run_check(world, opens)
    assert "byte-for-byte copy" not in outcome.stdout and "one file under two names" in outcome.stdout


def test_a_folder_whose_name_states_another_class_count_is_a_warning(world: World, opens: OpenRecorder, capsys):
    """``Animals6_OOP`` holding a 5-class split (a partial download, a hand-edited split) trained a
    5-way task without a word. The split file stays the authority, so the run goes on, with a warning
    naming both counts, in the run and in ``datasets.check``."""
    os.rename(world.root / OOP_DIR, world.root / "Animals6_OOP")
    moved = world.root / "Animals6_OOP" / f"split_Xin_{OOP_DIR}.json"
    expected = f"{moved}: 5 classes, but the folder name 'Animals6_OOP' says 6"
    before = world.snapshot()
    report = run_check(world, opens)
    assert report.rc == 0 and expected in report.stdout
    outcome = run_train(world, opens, capsys, shots=-1, extra=("--no-train",))
    assert outcome.rc == 0, outcome.stderr
    assert expected in outcome.stdout + outcome.stderr
    assert_nothing_lost(before, world)
    # the IP folder's name agrees with its split: no warning for it
    assert "says 3" not in report.stdout and "says 3" not in outcome.stdout + outcome.stderr
