"""scripts.grid: an engine cell equals its train.py run; order does not matter; reruns complete only the
missing cells; each (image, view) is encoded once."""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest
import torch

import trainers.base
from dassl import results as results_contract
from dassl.data.datasets import build_dataset
from lpclip import feat_extractor, linear_probe
from scripts import grid
from scripts.run_identity import command_state
from scripts.sweep import SweepSpec, build_jobs
from tests.helpers import run_train

DOMAIN = "Food"
#: 2 epochs and 2 views keep every cell at a second or two on the tiny model.
OPTS = ["OPTIM.MAX_EPOCH", "2"]
METRIC_KEYS = ("accuracy", "oop", "ip", "hmean")


def plan(root: Path, out: Path, methods: List[str], shots=(1, 2), seeds=(1, 2), **kw: Any) -> List[grid.Cell]:
    return grid.plan_grid(str(root), str(out), [DOMAIN], methods, list(shots), list(seeds), config_set="smoke",
                          views=2, opts=OPTS, **kw)


def results(path: str) -> Dict[str, Any]:
    return json.loads(Path(path).read_text())


def metrics(res: Dict[str, Any]) -> Dict[str, Any]:
    return {k: res[k] for k in METRIC_KEYS if k in res} | {"subsets": res.get("subsets")}


def assert_same_metrics(a: Dict[str, Any], b: Dict[str, Any]) -> None:
    ma, mb = metrics(a), metrics(b)
    assert set(ma) == set(mb)
    for key in METRIC_KEYS:
        if key in ma:
            assert ma[key] == pytest.approx(mb[key], abs=1e-6), key
    for sub, values in (ma["subsets"] or {}).items():
        for k, v in values.items():
            assert v == pytest.approx(mb["subsets"][sub][k], abs=1e-6), (sub, k)


@pytest.fixture(scope="module")
def engine_run(toy_root, tmp_path_factory):
    """One grid over the trained methods (and zero-shot), run once for the module."""
    out = tmp_path_factory.mktemp("grid")
    cells = plan(toy_root, out, ["fsnl", "coop", "clip_adapter", "taskres", "zeroshot"], shots=(2,), seeds=(1,))
    summary = grid.run_grid(cells)
    assert not summary.failed, summary.failed
    return cells


@pytest.mark.parametrize("method", ["fsnl", "coop", "clip_adapter", "taskres", "zeroshot"])
def test_engine_cell_equals_train_py(engine_run, method, tmp_path):
    cell = next(c for c in engine_run if c.method.name == method)
    assert cell.run is not None
    # The same command line as the sweep's, into another folder: a standalone, in-order run.
    argv = list(cell.run.argv(str(cell.cfg.DATASET.ROOT)))[2:]
    argv[argv.index("--output-dir") + 1] = str(tmp_path / "alone")
    run_train(argv)
    alone = results(str(tmp_path / "alone" / "results.json"))
    assert_same_metrics(results(cell.results_file), alone)
    # Same resolved config but for the output folder; the same files except the on-disk view cache.
    engine_cfg = (Path(cell.output_dir) / "config.yaml").read_text()
    assert engine_cfg.replace(cell.output_dir, str(tmp_path / "alone")) == (tmp_path / "alone" / "config.yaml").read_text()
    engine_files = {p.relative_to(cell.output_dir).parts[0] for p in Path(cell.output_dir).iterdir()}
    alone_files = {p.relative_to(tmp_path / "alone").parts[0] for p in (tmp_path / "alone").iterdir()}
    assert alone_files - engine_files <= {"feature_cache"}
    assert engine_files <= alone_files


def test_linear_probe_cell_equals_the_sweep_jobs(toy_root, tmp_path):
    # The extraction is seeded (scripts.sweep.PROBE_SEED): the tiny model's random init is the same in
    # the grid and in separate extractor processes, and a rerun recognises its files.
    cells = grid.plan_grid(str(toy_root), str(tmp_path / "g"), [DOMAIN], ["linear_probe"], [1, 2, 4, 8, 16],
                           config_set="smoke")
    assert not grid.run_grid(cells).failed
    spec = SweepSpec(method="linear_probe", root=str(toy_root), out=str(tmp_path / "s"), domains=[DOMAIN],
                     config_set="smoke")
    for job in build_jobs(spec):
        module = feat_extractor if job.argv[2] == "lpclip.feat_extractor" else linear_probe
        assert module.main(list(job.argv[3:])) == 0
    engine, alone = results(cells[0].results_file), results(build_jobs(spec)[-1].done)
    for k, res in alone["shots"].items():
        assert engine["shots"][k]["accuracies"] == pytest.approx(res["accuracies"], abs=1e-6)
        assert engine["shots"][k]["c"] == res["c"]
    dataset = cells[0].cfg.DATASET.NAME
    for sub in ("OOP", "IP"):
        for split in ("train", "val", "test"):
            with (
                open(feat_extractor.feature_file(cells[0].feature_dir, dataset, sub, split), "rb") as a,
                open(feat_extractor.feature_file(str(tmp_path / "s" / "clip_feat"), dataset, sub, split), "rb") as b,
            ):
                za, zb = np.load(a), np.load(b)
                assert sorted(za.files) == sorted(zb.files)
                for key in za.files:
                    np.testing.assert_array_equal(za[key], zb[key])

    # the extractor jobs are now skipped (their files carry their job identity), the cell too: with the
    # smoke config's random weights unseeded, a rerun re-extracted all six files (new weights), then
    # the probe refused its own earlier results (other feature content) with a traceback
    assert all(command_state(job.argv, job.done).done for job in build_jobs(spec))
    assert grid.cell_state(cells[0]).done
    files = sorted(Path(cells[0].feature_dir).rglob("*.npz")) + [Path(cells[0].results_file)]
    stamps = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files}
    again = grid.run_grid(grid.plan_grid(str(toy_root), str(tmp_path / "g"), [DOMAIN], ["linear_probe"],
                                         [1, 2, 4, 8, 16], config_set="smoke"))
    assert len(again.skipped) == 1 and not again.ran and not again.failed
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files} == stamps
    # a missing feature file is extracted alone; the files already there (which the results name) stay
    gone = Path(feat_extractor.feature_file(cells[0].feature_dir, cells[0].cfg.DATASET.NAME, "IP", "test"))
    gone.unlink()
    assert not grid.run_grid(cells).failed and gone.is_file()
    for p, (stamp, _) in stamps.items():
        if p not in (gone, Path(cells[0].results_file)):
            assert p.stat().st_mtime_ns == stamp, p
    # results of another probe configuration, found only once the missing file is extracted: the cell
    # fails in one line (a user error, no traceback; it was a RuntimeError) and the results stay
    res_path = Path(cells[0].results_file)
    res = results(str(res_path))
    res["fingerprint"]["config"]["num_run"] = 3
    res[results_contract.DIGEST_FIELD] = results_contract.content_digest(res)  # as that configuration wrote it
    res_path.write_text(json.dumps(res))
    before = res_path.read_bytes()
    gone.unlink()
    summary = grid.run_grid(cells)
    assert len(summary.failed) == 1 and summary.failed[0][1].startswith("OutputConflictError: --output-dir")
    assert "another probe configuration" in summary.failed[0][1] and res_path.read_bytes() == before
    assert isinstance(linear_probe.OutputConflictError("x"), grid.train.user_errors())
    # a feature file of another job in the cell's folder (here: extracted with SEED 2) is never taken for
    # the cell's: the grid stops before running anything, naming the file and the differing key
    path = Path(feat_extractor.feature_file(cells[0].feature_dir, dataset, "IP", "val"))
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    job = json.loads(str(arrays["job"]))
    job["weights"]["seed"] = 2
    arrays["job"] = np.array(json.dumps(job, sort_keys=True))
    feat_extractor.save_npz(str(path), arrays)
    before = path.read_bytes()
    state = grid.cell_state(cells[0])
    assert state.state == "mismatch" and state.path == str(path) and state.differences == ["job weights"]
    with pytest.raises(grid.RunConflict, match="IP/val.npz differs in: job weights"):
        grid.run_grid(cells)
    assert path.read_bytes() == before
    # the same with another of the six files missing: "missing" was answered at the first missing file,
    # so the cell ran and rewrote the other job's file without a word
    Path(feat_extractor.feature_file(cells[0].feature_dir, dataset, "OOP", "train")).unlink()
    assert grid.cell_state(cells[0]).state == "mismatch"
    with pytest.raises(grid.RunConflict, match="IP/val.npz differs in: job weights"):
        grid.run_grid(cells)
    assert path.read_bytes() == before
    extractor = next(j for j in build_jobs(spec) if j.done.endswith(str(Path("IP") / "val.npz")))
    assert command_state(extractor.argv, str(path).replace(str(tmp_path / "g"), str(tmp_path / "s"))).done


def test_shuffled_grid_order_gives_identical_results(toy_root, tmp_path):
    methods = ["fsnl", "coop"]
    first = plan(toy_root, tmp_path / "a", methods)
    second = plan(toy_root, tmp_path / "b", methods)
    random.Random(3).shuffle(second)
    assert [c.label for c in second] != [c.label for c in first]
    assert not grid.run_grid(first).failed
    assert not grid.run_grid(second).failed
    by_label = {c.label: c for c in second}
    for cell in first:
        a, b = results(cell.results_file), results(by_label[cell.label].results_file)
        assert a["accuracy"] == b["accuracy"] and a.get("ip") == b.get("ip")
        assert metrics(a) == metrics(b)


def test_killed_grid_reruns_only_the_missing_cells(toy_root, tmp_path, capsys):
    cells = plan(toy_root, tmp_path / "g", ["fsnl", "clip_adapter"], shots=(1,))
    assert len(cells) == 4

    class Killed(Exception):
        pass

    finished: List[str] = []

    def kill_after_two(cell: grid.Cell) -> None:
        finished.append(cell.label)
        if len(finished) == 2:
            raise Killed

    with pytest.raises(Killed):
        grid.run_grid(cells, after_cell=kill_after_two)
    stamps = {c.label: Path(c.results_file).stat().st_mtime_ns for c in cells if Path(c.results_file).exists()}
    assert set(stamps) == set(finished)

    again = grid.run_grid(plan(toy_root, tmp_path / "g", ["fsnl", "clip_adapter"], shots=(1,)))
    assert sorted(c.label for c in again.skipped) == sorted(finished)
    assert sorted(c.label for c in again.ran) == sorted(set(c.label for c in cells) - set(finished))
    for label, stamp in stamps.items():  # finished cells were not rewritten
        assert Path(next(c for c in cells if c.label == label).results_file).stat().st_mtime_ns == stamp
    # A finished run of another configuration in a cell's folder is never reused: one error line
    # naming the differing key, before anything runs; --force overwrites it.
    path = Path(cells[0].results_file)
    res = results(str(path))
    res["fingerprint"]["config"]["OPTIM.MAX_EPOCH"] = 3
    res[results_contract.DIGEST_FIELD] = results_contract.content_digest(res)  # as that configuration wrote it
    path.write_text(json.dumps(res))
    with pytest.raises(grid.RunConflict, match="OPTIM.MAX_EPOCH"):
        grid.run_grid(plan(toy_root, tmp_path / "g", ["fsnl", "clip_adapter"], shots=(1,)))
    # --dry-run asks the same question: it used to print the commands as if nothing were in the way
    cli = ["--root", str(toy_root), "--out", str(tmp_path / "g"), "--domains", DOMAIN, "--methods", "fsnl",
           "clip_adapter", "--shots", "1", "--seeds", "1", "2", "--config-set", "smoke", "--views", "2", "--dry-run",
           "--opts", *OPTS]
    capsys.readouterr()
    assert grid.main(cli) == 2
    out, err = capsys.readouterr()
    err = err.strip().splitlines()
    assert not out and len(err) == 1 and err[0].startswith("error: 1 job(s) would overwrite a different finished run: ")
    assert "OPTIM.MAX_EPOCH" in err[0] and "--force" in err[0]
    assert grid.main(cli[:-3] + ["--force", "--opts", *OPTS]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 4
    forced = grid.run_grid(plan(toy_root, tmp_path / "g", ["fsnl", "clip_adapter"], shots=(1,)), force=True)
    assert len(forced.ran) == 4 and grid.is_finished(cells[0])


def test_image_encoder_runs_once_per_image_and_view(toy_root, tmp_path, monkeypatch):
    rows: Counter = Counter()
    calls = {"n": 0}
    real_load = trainers.base.load_clip

    def counting_load(*args: Any, **kwargs: Any):
        loaded = real_load(*args, **kwargs)
        encode = loaded.model.encode_image

        def counted(images: torch.Tensor, *a: Any, **k: Any) -> torch.Tensor:
            calls["n"] += 1
            # A padded one-image batch repeats its row; count each distinct input once per call.
            for row in {bytes(img.detach().cpu().numpy().tobytes()) for img in images}:
                rows[row] += 1
            return encode(images, *a, **k)

        loaded.model.encode_image = counted
        return loaded

    monkeypatch.setattr(trainers.base, "load_clip", counting_load)
    # its own evaluation cache: the session's may hold these test features from an earlier test of
    # the same worker (same toy images, same seeded random model), and then nothing is encoded
    monkeypatch.setenv("FSNL_CACHE_DIR", str(tmp_path / "fsnl_cache"))
    views = 2
    cells = grid.plan_grid(str(toy_root), str(tmp_path / "g"), [DOMAIN], ["fsnl", "coop", "zeroshot"], [1, 2],
                           [1], config_set="smoke", views=views, opts=OPTS)
    assert not grid.run_grid(cells).failed
    assert rows and max(rows.values()) == 1  # no (image, view) was encoded twice

    # Independently: the union of the trained cells' few-shot images × views, plus every test image of
    # OOP (the runs) and IP (their cross-evaluation).
    train_images = set()
    test_images = set()
    for cell in cells:
        dataset = build_dataset(cell.cfg)
        if cell.method.kind == "train":
            train_images |= {d.impath for d in dataset.train_x}
        test_images |= {d.impath for d in dataset.test}
        cfg_ip = cell.cfg.clone()
        cfg_ip.defrost()
        cfg_ip.DATASET.SUB_CLASSES = "IP"
        test_images |= {d.impath for d in build_dataset(cfg_ip).test}
    assert sum(rows.values()) == len(train_images) * views + len(test_images)
    assert calls["n"] < sum(rows.values())  # batched, not one call per image


def test_worker_processes_give_the_same_results_as_one_process(toy_root, tmp_path, capsys):
    """Two (dataset, backbone) groups in two spawned workers: every cell runs once, in its group's
    worker, and its results equal the in-process grid's (a result never depends on the process). The
    console gets one line per cell as it finishes, numbered across both workers."""
    methods = ["fsnl", "clip_adapter", "zeroshot"]

    def planned(out: Path) -> List[grid.Cell]:
        return grid.plan_grid(str(toy_root), str(out), ["Animals", DOMAIN], methods, [1], [1], config_set="smoke",
                              views=2, opts=OPTS)

    serial, parallel = planned(tmp_path / "one"), planned(tmp_path / "two")
    assert len(grid.group_cells(parallel)) == 2
    one = grid.run_grid(serial, workers=1)
    capsys.readouterr()
    two = grid.run_grid(parallel, workers=2, threads=1)
    assert not one.failed and not two.failed, (one.failed, two.failed)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if " done " in ln]
    n = len(parallel)
    assert [ln.split()[0] for ln in lines] == [f"[{k}/{n}]" for k in range(1, n + 1)]
    assert sorted(ln.split()[1] for ln in lines) == sorted(f"[{c.dataset}]" for c in parallel)
    assert sorted(c.output_dir for c in two.ran) == sorted(c.output_dir for c in parallel)
    assert two.encoded == one.encoded > 0
    for a, b in zip(serial, parallel):
        assert a.label == b.label
        assert_same_metrics(results(a.results_file), results(b.results_file))
    # a rerun finds every cell finished (the workers wrote the same fingerprints)
    again = grid.run_grid(planned(tmp_path / "two"), workers=2)
    assert not again.ran and len(again.skipped) == len(parallel)


@pytest.mark.parametrize("out,flag,expected", [
    ("file", (), "is a file, not a directory"),
    ("/dev/null", (), "is a file, not a directory"),
    ("dir", ("--views", "-3"), "--views -3"),
    ("dir", ("--workers", "-1"), "--workers -1"),
    ("dir", ("--threads", "-2"), "--threads -2"),
    ("dir", ("--views", "0", "--dry-run"), "--views 0"),
    ("file", ("--dry-run",), "is a file, not a directory"),  # printed commands the run would refuse
    ("dir", ("--shots", "0", "--dry-run"), "--shots 0: every shot count must be >= 1"),
    ("dir", ("--seeds", "-1", "--dry-run"), "--seeds -1: every seed must be >= 0"),
    ("dir", ("--config", "cpu_smoke"), "--config-set smoke and --config cpu_smoke: --config replaces"),
    # keys the plan sets per cell: OUTPUT_DIR wrote a cell outside --out, SEED filed seed 5 under seed1
    ("dir", ("--dry-run", "--opts", "OUTPUT_DIR", "elsewhere"), "--opts OUTPUT_DIR: set for each zeroshot job from --out"),
    ("dir", ("--opts", "SEED", "5"), "--opts SEED: set for each zeroshot job from --seeds; use --seeds instead"),
    ("dir", ("--opts", "OPTIM.LR", "1", "DATASET.ROOT", "/nonexistent"), "--opts DATASET.ROOT: set for each zeroshot job from --root"),
    # an option after --opts was taken as a config item (the odd count then listed the grid's own VIEWS)
    ("dir", ("--opts", "OPTIM.LR", "0.1", "--dry-run"), "put --dry-run before --opts"),
    ("dir", ("--opts", "OPTIM.LR"), "--opts needs KEY VALUE pairs, got an odd number of items: OPTIM.LR"),
    # values train.py refuses were found in each cell, after the first had trained (one failure per cell)
    ("dir", ("--opts", "DATASET.SUB_CLASSES", "Foo"), 'DATASET.SUB_CLASSES: "Foo" is not one of the 3'),
    ("dir", ("--methods", "fsnl", "--shots", "1", "--opts", "OPTIM.MAX_EPOCH", "-3"), "fsnl Food53_27 K=1 seed=1: OPTIM.MAX_EPOCH must be"),
    ("dir", ("--methods", "coop", "--shots", "2", "--dry-run", "--opts", "OPTIM.LR", "-1"), "OPTIM.LR"),
    ("dir", ("--methods", "coop", "--shots", "1", "--opts", "OPTIM.WEIGHT_DECAY", "-1"),
     "coop Food53_27 K=1 seed=1: OPTIM.WEIGHT_DECAY must be a finite number >= 0"),
])
def test_bad_output_root_or_counts_fail_before_any_cell(toy_root, tmp_path, capsys, monkeypatch, out, flag, expected):
    """--out that is a file (or /dev/null) used to fail in every cell with a traceback; negative counts
    were silently accepted. Now one line, exit 2, before a cell runs."""
    monkeypatch.setattr(grid, "run_grid", lambda *a, **k: pytest.fail("a cell ran"))
    target = {"file": tmp_path / "f", "dir": tmp_path / "g"}.get(out, Path(out))
    if out == "file":
        target.write_text("keep")
    rc = grid.main(["--root", str(toy_root), "--out", str(target), "--domains", DOMAIN, "--methods", "zeroshot",
                    "--config-set", "smoke", *flag])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and "\n" not in err and expected in err, err
    if out == "file":
        assert target.read_text() == "keep"
    if out == "dir":  # planning creates nothing: an empty --out was left behind by a config mistake
        assert not target.exists()


def test_dry_run_prints_the_probe_jobs(toy_root, tmp_path, capsys):
    """--dry-run printed the probe cell as a comment ("# linear_probe Food"): launched, the printed file
    ran every other cell and silently no probe. It prints the sweep's extractor and probe jobs now."""
    out = tmp_path / "g"
    assert grid.main(["--root", str(toy_root), "--out", str(out), "--domains", DOMAIN, "--methods", "zeroshot",
                      "linear_probe", "--shots", "1", "2", "--config-set", "smoke", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    spec = SweepSpec(method="linear_probe", root=str(toy_root), out=str(out), domains=[DOMAIN], shots=[1, 2],
                     config_set="smoke")
    probe = [job.command for job in build_jobs(spec)]
    assert lines[-len(probe):] == probe and not any(ln.startswith("#") for ln in lines)
    assert probe[-1].endswith("--shots 1 2") and all("--seed 1" in c for c in probe[:-1])


def test_missing_root_and_repeated_values(toy_root, tmp_path, capsys):
    """A --dry-run with a dataset root that does not exist printed commands (rc 0); a shot count, seed
    or method given twice planned two cells into one folder."""
    rc = grid.main(["--root", str(tmp_path / "nope"), "--out", str(tmp_path / "g"), "--domains", DOMAIN,
                    "--methods", "zeroshot", "--config-set", "smoke", "--dry-run"])
    out, err = capsys.readouterr()
    assert rc == 2 and not out and err.strip() == f"error: --root {tmp_path / 'nope'} is not a directory (the dataset root)"
    # a domain that is not under --root (zero-shot cells plan without reading it): one line, not per-cell failures
    rc = grid.main(["--root", str(toy_root), "--out", str(tmp_path / "g"), "--domains", DOMAIN, "MiniPlants",
                    "--methods", "zeroshot", "--config-set", "smoke", "--dry-run"])
    out, err = capsys.readouterr()
    assert rc == 2 and not out and err.startswith("error: Cannot count the OOP classes of MiniPlants") and err.count("\n") == 1
    # a shot count no class of the domain has images for: one line up front, not one failed cell per seed
    rc = grid.main(["--root", str(toy_root), "--out", str(tmp_path / "g"), "--domains", DOMAIN, "--methods", "coop",
                    "--shots", "1", "50", "--config-set", "smoke", "--dry-run"])
    out, err = capsys.readouterr()
    assert rc == 2 and not out and err.startswith("error: --shots 50: no class of Food53_27 under --root has that many")
    cells = plan(toy_root, tmp_path / "g", ["fsnl", "clip_adapter", "fsnl"], shots=(1, 1, 2), seeds=(2, 1, 2))
    dirs = [c.output_dir for c in cells]
    assert len(dirs) == len(set(dirs)) == 2 * 2 * 2
    assert [c.method.name for c in cells[::4]] == ["fsnl", "clip_adapter"]


def test_unreadable_image_fails_its_cell_in_one_line(toy_root, toy_info, tmp_path, capsys):
    """A truncated image is the user's data problem: the cell fails with train.py's one line, no traceback."""
    root = tmp_path / "data"
    shutil.copytree(toy_root, root)
    images = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    for path in images:
        path.write_bytes(path.read_bytes()[:40])
    summary = grid.run_grid(plan(root, tmp_path / "g", ["zeroshot"], shots=(1,), seeds=(3,)))
    err = capsys.readouterr().err
    assert len(summary.failed) == 1 and "Traceback" not in err, err
    assert "Cannot decode" in summary.failed[0][1] or "cannot" in summary.failed[0][1].lower(), summary.failed


# ------------------------------------------------------------------ interrupted and broken grids (subprocesses)
REPO = Path(__file__).resolve().parents[1]


def _start_grid(root: Path, out: Path, domains: List[str], workers: int, epochs: int = 30) -> subprocess.Popen:
    """The grid CLI in its own session (a terminal's Ctrl-C reaches its whole process group): 4 cells per
    domain of ``epochs`` epochs (30: about a second each here)."""
    cmd = [sys.executable, "-m", "scripts.grid", "--root", str(root), "--out", str(out), "--domains", *domains,
           "--methods", "fsnl", "coop", "--shots", "1", "2", "--seeds", "1", "--config-set", "smoke", "--views", "2",
           "--workers", str(workers), "--threads", "1", "--opts", "OPTIM.MAX_EPOCH", str(epochs)]
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", HF_HUB_OFFLINE="1")
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _wait_for_results(out: Path, proc: subprocess.Popen, count: int = 1, timeout: float = 240.0) -> None:
    deadline = time.time() + timeout
    while len(list(out.rglob(grid.RESULTS_FILE))) < count:
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "no cell finished in time"
        time.sleep(0.1)


def _summary(err: str) -> Dict[str, int]:
    """The counts of the grid's summary line (the last line of stderr that starts with "grid: ")."""
    line = [ln for ln in err.splitlines() if ln.startswith("grid: ") and " ran " in ln][-1]
    numbers = re.findall(r"(\d+) cell\(s\): ran (\d+), skipped (\d+), failed (\d+)(?:, not run (\d+))?", line)[0]
    total, ran, skipped, failed, not_run = (int(x or 0) for x in numbers)
    return {"total": total, "ran": ran, "skipped": skipped, "failed": failed, "not_run": not_run}


CTRL_C_EPOCHS = 400


@pytest.mark.parametrize("workers", [1, 2])
def test_ctrl_c_twice_stops_now_with_a_summary_and_the_rerun_completes(toy_root, tmp_path, workers):
    """A first Ctrl-C asks the grid to stop after the running cell(s), a second one stops it now: exit 130,
    no traceback (from the parent or a worker), the summary counts what finished (every results.json on
    disk, and nothing else), and a rerun runs exactly the rest. Before, Ctrl-C ended in a traceback and
    no summary; SIGTERM's summary counted only the cells that ran as the grid's total."""
    domains = [DOMAIN] if workers == 1 else ["Animals", DOMAIN]
    out = tmp_path / "g"
    # cells of several seconds: with 30 epochs (a second or less) the running cell could end between the
    # two signals, and the second then met a grid that had already stopped (a flaky exit code)
    proc = _start_grid(toy_root, out, domains, workers, epochs=CTRL_C_EPOCHS)
    _wait_for_results(out, proc)
    for _ in range(2):
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(0.3)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == grid.INTERRUPTED, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    counts = _summary(err)
    finished = len(list(out.rglob(grid.RESULTS_FILE)))
    assert counts["total"] == 4 * len(domains) and counts["ran"] == finished >= 1
    assert counts["failed"] == 0 and counts["ran"] + counts["not_run"] == counts["total"]
    pending, done = grid.pending_cells(grid.plan_grid(str(toy_root), str(out), domains, ["fsnl", "coop"], [1, 2], [1],
                                                      config_set="smoke", views=2,
                                                      opts=["OPTIM.MAX_EPOCH", str(CTRL_C_EPOCHS)]))
    assert len(done) == finished and len(pending) == counts["total"] - finished


def test_a_second_ctrl_c_outside_the_running_cells_does_nothing():
    """Only while run_grid runs cells (armed) does a second Ctrl-C raise, and only once; elsewhere it is
    ignored (it used to raise wherever it came, e.g. while the summary was being printed)."""
    stop = grid.GridStop()
    stop.interrupt()
    assert stop.is_set()
    stop.interrupt()  # the cells have ended: nothing to cut short
    with pytest.raises(KeyboardInterrupt):
        with grid._cut_short_allowed(stop):
            stop.interrupt()
    assert not stop.armed
    with grid._cut_short_allowed(stop):
        stop.armed = False  # what the handler does before raising: a third Ctrl-C raises nothing more
        stop.interrupt()


def test_two_ctrl_c_as_the_grid_finishes_keep_the_summary(toy_root, tmp_path, capsys, monkeypatch):
    """Two Ctrl-C that arrive after the last cell ended (here: as run_grid returns) used to raise out of
    the CLI: "interrupted", exit 130 and no summary, though every cell had run. Now the summary is printed
    and the exit status says the grid completed; the CLI's signal handlers are gone afterwards."""
    def finishing_grid(cells, **kw):
        for _ in range(2):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # the Python-level handler runs here
        return grid.GridSummary(total=len(cells), ran=list(cells))

    monkeypatch.setattr(grid, "run_grid", finishing_grid)
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    rc = grid.main(["--root", str(toy_root), "--out", str(tmp_path / "g"), "--domains", DOMAIN, "--methods",
                    "zeroshot", "--config-set", "smoke"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "grid: 1 cell(s): ran 1, skipped 0, failed 0 in" in err and "interrupted" not in err.splitlines(), err
    assert {s: signal.getsignal(s) for s in before} == before


def test_a_grid_started_with_ctrl_c_ignored_keeps_ignoring_it():
    """``python -m scripts.grid ... &`` in a script starts with SIGINT ignored: the grid must not take
    Ctrl-C back (a terminal's Ctrl-C would stop a background grid); SIGTERM still stops it."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        stop = grid.GridStop()
        with grid._stop_handlers(stop):
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def _worker_pids(parent: int) -> List[int]:
    """The grid's spawned worker processes (children of ``parent`` running multiprocessing's spawn_main,
    not its resource tracker)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if int(fields[1]) == parent and "spawn_main" in cmdline and "resource_tracker" not in cmdline:
            pids.append(int(stat.parent.name))
    return pids


def _sigint_ignored_in(pid: int) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGINT - 1)))
    raise AssertionError(f"no SigIgn in /proc/{pid}/status")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the worker processes through /proc")
def test_workers_ignore_ctrl_c_from_their_first_instruction(toy_root, tmp_path):
    """A Ctrl-C while a worker was still importing (seconds, before its initializer set SIGINT to
    ignored) ended that worker with a KeyboardInterrupt traceback: CI once caught it (the two-Ctrl-C test,
    on a loaded machine). The workers are now spawned with SIGINT ignored, so it is ignored as soon as
    they exist: read from /proc while they are still starting."""
    proc = _start_grid(toy_root, tmp_path / "g", ["Animals", DOMAIN], 2)
    try:
        deadline, seen = time.time() + 60, []
        while time.time() < deadline and not seen:
            seen = _worker_pids(proc.pid)
            time.sleep(0.005)
        assert seen, "no worker process appeared"
        assert all(_sigint_ignored_in(pid) for pid in seen)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the worker processes through /proc")
def test_a_killed_worker_fails_only_cells_that_did_not_finish(toy_root, tmp_path):
    """A worker killed mid-grid (OOM killer, kill -9) breaks the process pool. Before, every cell not yet
    returned -- the other worker's finished ones too -- was counted failed, a finished cell's line came
    after that as "[9/8]", and the summary said "7 cell(s): ran 0". Now the counts match the disk: a cell
    ran iff its results.json exists, every other one failed with one line naming the cause."""
    out = tmp_path / "g"
    proc = _start_grid(toy_root, out, ["Animals", DOMAIN], 2)
    _wait_for_results(out, proc)
    workers = _worker_pids(proc.pid)
    assert workers
    os.kill(workers[0], signal.SIGKILL)
    stdout, err = proc.communicate(timeout=240)
    assert proc.returncode == 1, err
    counts = _summary(err)
    finished = len(list(out.rglob(grid.RESULTS_FILE)))
    assert counts["total"] == 8 and counts["ran"] == finished >= 1 and counts["ran"] + counts["failed"] == 8
    numbered = re.findall(r"^\[(\d+)/(\d+)\]", stdout, flags=re.M)
    assert [int(k) for k, _ in numbered] == list(range(1, 9)) and {int(n) for _, n in numbered} == {8}, stdout
    failed = [ln for ln in err.splitlines() if ln.startswith("  FAILED ")]
    assert len(failed) == counts["failed"] and all("a worker process died" in ln for ln in failed), err


def test_a_damaged_results_file_is_named_once_as_unreadable(toy_root, tmp_path, capsys):
    """A truncated results.json in a cell's folder was reported as "a different finished run: <path>
    differs in: <path>: not valid JSON" (the path twice, and a damaged file called a run)."""
    cells = plan(toy_root, tmp_path / "g", ["zeroshot"], shots=(1,), seeds=(1,))
    path = Path(cells[0].results_file)
    path.parent.mkdir(parents=True)
    path.write_text('{"schema": 1, "acc')
    assert grid.main(["--root", str(toy_root), "--out", str(tmp_path / "g"), "--domains", DOMAIN, "--methods",
                      "zeroshot", "--seeds", "1", "--config-set", "smoke", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: 1 job(s) would overwrite a finished run that cannot be checked: ")
    assert err.count(str(path)) == 1 and "--force" in err and path.read_text() == '{"schema": 1, "acc'
