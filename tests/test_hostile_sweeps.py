"""The sweep layer on hostile input found by a hostile pass: two processes writing one run folder at
once, hand-edited results.json files of the wrong shape, a run folder copied to another seed's name,
the checkpoints of a killed run of another configuration, the grid's exit code for user errors, and
the sweep's and launcher's up-front checks. Each test builds the input and asserts the exit code, the
one line and that nothing was lost."""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

import train
from dassl import results
from dassl.utils import WriteError, hold_output_dir
from lpclip import linear_probe
from scripts import grid, launch, parse_test_res, sweep
from tests.helpers import REPO, snapshot_tree, train_argv

TRAINER = "FSNL_openclip"
DOMAIN = "Food"
OPTS = ["OPTIM.MAX_EPOCH", "2"]


def grid_cli(root: Path, out: Path, methods: List[str], *extra: str, seeds=("1",)) -> List[str]:
    return ["--root", str(root), "--out", str(out), "--domains", DOMAIN, "--methods", *methods, "--shots", "1",
            "--seeds", *seeds, "--config-set", "smoke", "--views", "2", "--workers", "1", *extra, "--opts", *OPTS]


def one_line(capsys: pytest.CaptureFixture, rc: int, expected_rc: int = 2) -> str:
    captured = capsys.readouterr()
    assert rc == expected_rc, captured.err
    lines = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.err + captured.out
    return lines[0]


@pytest.fixture(scope="module")
def finished_grid(toy_root, tmp_path_factory) -> Path:
    """A grid with one finished FSNL cell and one zero-shot cell (the tests copy it before changing it)."""
    out = tmp_path_factory.mktemp("sweeps") / "g"
    assert grid.main(grid_cli(toy_root, out, ["fsnl", "zeroshot"])) == 0
    logging.getLogger().handlers.clear()
    return out


def cell_results(out: Path, trainer: str = TRAINER) -> Path:
    (path,) = [p for p in out.rglob(results.RESULTS_FILE) if trainer in str(p)]
    return path


# ------------------------------------------------------------------------------ one folder, two processes
def test_the_run_folder_lock_holds_across_processes(tmp_path):
    """``flock`` on the folder itself: a second process is refused while the first holds it, and a
    killed holder leaves no stale lock (nor any lock file)."""
    folder = tmp_path / "run"
    folder.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from dassl.utils import hold_output_dir\n"
        f"with hold_output_dir({str(folder)!r}):\n    print('held', flush=True); time.sleep(60)")],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(WriteError, match="is in use: another process is running there now"):
            with hold_output_dir(str(folder)):
                pass
    finally:
        holder.kill()
        holder.wait()
    with hold_output_dir(str(folder)):  # released with its process
        pass
    assert list(folder.iterdir()) == []


def test_train_py_into_a_folder_another_process_is_running_in_is_refused(toy_root, finished_grid, tmp_path, capsys):
    """Two runs into one folder both trained it; the later results.json silently replaced the earlier
    one. Now the second is one line and the folder is untouched."""
    out = tmp_path / "g"
    shutil.copytree(finished_grid, out)
    (cell,) = grid.plan_grid(str(toy_root), str(out), [DOMAIN], ["fsnl"], [1], [1], config_set="smoke", views=2,
                             opts=OPTS)
    folder = Path(cell.output_dir)
    (folder / results.RESULTS_FILE).unlink()  # its run would resume and rewrite everything
    before = snapshot_tree(folder)
    with hold_output_dir(str(folder)):  # another process's run, as far as flock can tell (own descriptor)
        line = one_line(capsys, train.cli(list(cell.run.argv(str(toy_root)))[2:]))
    assert "is in use: another process is running there now" in line and str(folder) in line
    assert snapshot_tree(folder) == before
    # an evaluation into a folder a live run of another configuration writes: "in use", not "another
    # configuration ... use --overwrite to replace it" (advice to overwrite a folder being written)
    model = finished_grid / folder.relative_to(out)  # the finished run it copies
    with hold_output_dir(str(folder)):  # the folder's checkpoints are a training's, not this evaluation's
        line = one_line(capsys, train.cli(["--eval-only", "--model-dir", str(model),
                                           *list(cell.run.argv(str(toy_root)))[2:]]))
    assert "is in use: another process is running there now" in line and "--overwrite" not in line, line
    # and a fresh folder another process has just created
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    with hold_output_dir(str(fresh)):
        one_line(capsys, train.cli(train_argv(toy_root, fresh, TRAINER)))
    assert list(fresh.iterdir()) == []


def test_a_grid_cell_held_by_another_process_fails_alone_and_the_grid_exits_2(toy_root, finished_grid, tmp_path,
                                                                             capsys):
    """The held cell fails with the one line (once on the console, in the summary), the other cells
    run, nothing in the held folder changes, and the exit code is a user error's (2), not a bug's."""
    out = tmp_path / "g"
    shutil.copytree(finished_grid, out)
    held = cell_results(out).parent
    (held / results.RESULTS_FILE).unlink()  # so that the cell is pending
    before = snapshot_tree(held)
    with hold_output_dir(str(held)):
        rc = grid.main(grid_cli(toy_root, out, ["fsnl", "zeroshot"], seeds=("1", "2")))
    captured = capsys.readouterr()
    console = captured.out + captured.err
    assert rc == 2, console
    # once as the cell's progress line, once in the summary; the log line stays in the cell's log.txt
    assert "Traceback" not in console and console.count("is in use: another process is running there now") == 2
    assert "cell failed" not in console
    assert snapshot_tree(held) == before
    assert len(list(out.rglob(results.RESULTS_FILE))) == 3  # zero-shot seed 1 (kept), seed 2, FSNL seed 2


def test_a_probe_into_a_held_folder_is_refused(toy_root, tmp_path, capsys):
    out = tmp_path / "g"
    assert grid.main(grid_cli(toy_root, out, ["linear_probe"])) == 0
    (probe,) = out.rglob("linear_probe")
    argv = ["--feature-dir", str(out / "clip_feat"), "--dataset", str(json.loads(
        (probe / results.RESULTS_FILE).read_text())["dataset"]), "--output-dir", str(tmp_path / "probe"),
        "--shots", "1"]
    (tmp_path / "probe").mkdir()
    capsys.readouterr()
    with hold_output_dir(str(tmp_path / "probe")):
        line = one_line(capsys, linear_probe.main(argv))
    assert "is in use" in line and list((tmp_path / "probe").iterdir()) == []


# ------------------------------------------------------------------------------ results.json of the wrong shape
@pytest.mark.parametrize("field,value,expected", [
    ("data", "x", 'fingerprint field "data" is str, not dict'),
    ("data", [1], 'fingerprint field "data" is list, not dict'),
    ("config", [1], 'fingerprint field "config" is list, not dict'),
    ("weights", 3, 'fingerprint field "weights" is int, not dict'),
    ("id", None, 'fingerprint field "id" is NoneType, not str'),
])
def test_a_fingerprint_field_of_the_wrong_type_is_one_line_everywhere(toy_root, finished_grid, tmp_path, capsys,
                                                                      caplog, field, value, expected):
    """Each was a traceback (AttributeError / TypeError) in the grid's, the sweep's and the launcher's skip
    checks and in parse_test_res."""
    out = tmp_path / "g"
    shutil.copytree(finished_grid, out)
    path = cell_results(out)
    data = json.loads(path.read_text())
    data["fingerprint"][field] = value
    path.write_text(json.dumps(data))
    before = snapshot_tree(out)
    with pytest.raises(results.ResultsError, match=expected):
        results.read_results(str(path))
    line = one_line(capsys, grid.main(grid_cli(toy_root, out, ["fsnl"], "--dry-run")))
    assert "cannot be checked" in line and expected in line and "--force" in line
    sweep_argv = ["--method", "fsnl", "--root", str(toy_root), "--out", str(out), "--domains", DOMAIN,
                  "--shots", "1", "--seeds", "1", "--config-set", "smoke", "--dry-run", "--opts", *OPTS, "DATALOADER.FEATURE_CACHE.VIEWS", "2"]
    line = one_line(capsys, sweep.main(sweep_argv))
    assert expected in line
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert parse_test_res.main([str(out)]) == 0  # the other runs are summarised; this one is named
    assert expected in caplog.text and str(path) in caplog.text
    assert snapshot_tree(out) == before


def test_a_results_file_without_its_accuracy_is_not_a_finished_run(toy_root, finished_grid, tmp_path, capsys):
    """Counted finished (skipped) and then silently dropped from the table."""
    out = tmp_path / "g"
    shutil.copytree(finished_grid, out)
    path = cell_results(out)
    data = json.loads(path.read_text())
    for key in ("accuracy", "subsets", "oop", "ip", "hmean", "metrics"):
        data.pop(key, None)
    path.write_text(json.dumps(data))
    line = one_line(capsys, grid.main(grid_cli(toy_root, out, ["fsnl"], "--dry-run")))
    assert "lacks the field(s) ['accuracy']" in line and str(path) in line


# ------------------------------------------------------------------------------ parse_test_res
def test_a_run_folder_copied_to_another_seed_is_not_another_seed(finished_grid, tmp_path, caplog):
    out = tmp_path / "g"
    shutil.copytree(finished_grid, out)
    seed1 = cell_results(out).parent
    copy = seed1.parent / "seed2"
    shutil.copytree(seed1, copy)
    with caplog.at_level(logging.WARNING):
        groups = [g for g in parse_test_res.collect(str(out)) if TRAINER in g.method or "FSNL" in g.method]
    assert len(groups) == 1 and groups[0].runs == 1 and groups[0].seeds == [1], groups
    text = caplog.text
    assert "trained with SEED 1 but lies in seed2/" in text and "Duplicate result" in text
    assert str(seed1) in text and str(copy) in text


def test_unseeded_runs_keep_their_folders_seeds(finished_grid, tmp_path, caplog):
    """SEED -1 (CoOp's unseeded runs, one per seed folder) is no seed to count a run under: the copy rule
    above merged such runs into one (n=1, the others dropped as duplicates)."""
    out = tmp_path / "g"
    shutil.copytree(finished_grid, out)
    seed1 = cell_results(out).parent
    shutil.copytree(seed1, seed1.parent / "seed2")
    for folder, accuracy in ((seed1, 40.0), (seed1.parent / "seed2", 20.0)):
        path = folder / results.RESULTS_FILE
        data = json.loads(path.read_text())
        data["seed"] = -1
        data["fingerprint"]["config"]["SEED"] = -1
        for key in ("accuracy", "oop"):
            data[key] = accuracy
        data["subsets"]["OOP"]["accuracy"] = data["metrics"]["accuracy"] = accuracy
        data[results.DIGEST_FIELD] = results.content_digest(data)  # as if written so (an edit is refused)
        path.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING):
        groups = [g for g in parse_test_res.collect(str(out)) if "FSNL" in g.method]
    assert len(groups) == 1 and groups[0].runs == 2 and groups[0].oop.mean == 30.0, groups
    assert "Duplicate result" not in caplog.text


# ------------------------------------------------------------------------------ a killed run of another setting
def test_checkpoints_of_another_configuration_stop_the_grid_at_plan_time(toy_root, finished_grid, tmp_path, capsys):
    """Found only when the cell ran (after the other cells had trained), printed three times, exit 1."""
    out = tmp_path / "g"
    shutil.copytree(finished_grid, out)
    folder = cell_results(out).parent
    (folder / results.RESULTS_FILE).unlink()  # a run killed after its last checkpoint
    before = snapshot_tree(out)
    argv = grid_cli(toy_root, out, ["fsnl"])
    argv[argv.index("OPTIM.MAX_EPOCH") + 1] = "2"
    argv += ["OPTIM.LR", "0.5"]
    # the LR is not in the smoke folder names' keys? then it is a folder of its own: use the data instead
    data = tmp_path / "data"
    shutil.copytree(toy_root, data)
    split = next(data.glob(f"{DOMAIN}*_OOP/split_*.json"))
    rows = json.loads(split.read_text())
    rows["test"].pop(max(rows["test"], key=int) if isinstance(rows["test"], dict) else -1)
    split.write_text(json.dumps(rows))
    for extra in (["--dry-run"], []):
        line = one_line(capsys, grid.main(grid_cli(data, out, ["fsnl"], *extra)))
        assert line.startswith("error: 1 job(s) would overwrite a different unfinished run (its checkpoints): ")
        assert str(folder) in line and "data.OOP" in line and "--force" in line
    assert snapshot_tree(out) == before


# ------------------------------------------------------------------------------ up-front checks
def test_sweep_checks_its_interpreter_feature_dir_and_out_link_before_any_job(toy_root, tmp_path, capsys):
    base = ["--method", "linear_probe", "--root", str(toy_root), "--domains", DOMAIN, "--shots", "1",
            "--config-set", "smoke"]
    a_file = tmp_path / "afile"
    a_file.write_text("mine\n")
    line = one_line(capsys, sweep.main(base + ["--out", str(tmp_path / "s"), "--feature-dir", str(a_file)]))
    assert "--feature-dir" in line and str(a_file) in line and a_file.read_text() == "mine\n"
    line = one_line(capsys, sweep.main(base + ["--out", str(tmp_path / "s"), "--python", str(tmp_path / "nope")]))
    assert "--python" in line and "nope" in line
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    line = one_line(capsys, sweep.main(base + ["--out", str(tmp_path / "dangling")]))
    assert "is a dangling symbolic link" in line
    assert not (tmp_path / "s").exists() and not (tmp_path / "gone").exists()


@pytest.mark.parametrize("variant", ["same", "slash", "equals", "file", "prefix", "relative"])
def test_launch_refuses_a_repeated_grid_line(toy_root, tmp_path, capsys, variant):
    """A grid line twice ran its cells twice at once (`succeeded 2`); train.py lines were refused already.
    Lines that say the same in other words are the same grid (a hostile pass got five variants past a
    comparison of the words)."""
    args = grid_cli(toy_root, tmp_path / "g", ["fsnl"])
    line = " ".join(["python", "-m", "scripts.grid", *args])
    out_at = args.index("--out")
    other = {
        "same": line,
        "slash": line.replace(f"--out {tmp_path / 'g'}", f"--out {tmp_path / 'g'}/"),
        "equals": line.replace(f"--out {tmp_path / 'g'}", f"--out={tmp_path / 'g'}"),
        "file": line.replace("python -m scripts.grid", f"{sys.executable} scripts/grid.py"),
        "prefix": "OMP_NUM_THREADS=1 " + line.replace("python ", "python3 ", 1),
        "relative": line.replace(f"--out {tmp_path / 'g'}", f"--out {os.path.relpath(tmp_path / 'g', REPO)}"),
    }[variant]
    assert args[out_at + 1] == str(tmp_path / "g")
    commands = tmp_path / "runs.txt"
    commands.write_text(f"{line}\n{other}\n")
    rc = launch.main([str(commands), "--workers", "2", "--log-dir", str(tmp_path / "logs")])
    err = one_line(capsys, rc)
    assert "line 2 repeats line 1" in err and "Remove the repeat" in err, err
    assert not (tmp_path / "g").exists()
    # another --out, or another domain, is another grid: not a repeat
    commands.write_text(f"{line}\n{line.replace(str(tmp_path / 'g'), str(tmp_path / 'h'))}\n")
    launch.check_outputs(launch.parse_commands(commands.read_text()), str(REPO))



# ------------------------------------------------------------------------- outputs among the dataset's files
@pytest.fixture
def private_root(toy_root, tmp_path) -> Path:
    dst = tmp_path / "data"
    shutil.copytree(toy_root, dst, ignore=shutil.ignore_patterns("split_fewshot"))
    return dst


def test_an_output_folder_inside_a_dataset_folder_is_one_line_before_any_work(private_root, tmp_path, capsys):
    """``--output-dir <subset>/images/ant``: config.yaml, log.txt, results.json and checkpoints landed among
    the images, exit 0, and ``datasets.check`` still passed; the grid's --out the same."""
    before = snapshot_tree(private_root)
    (subset,) = private_root.glob("Food*_OOP")
    inside = subset / "images" / sorted(os.listdir(subset / "images"))[0]
    line = one_line(capsys, train.cli(train_argv(private_root, inside, TRAINER, *OPTS, dataset="Food53_27")))
    assert f'--output-dir "{inside}" lies inside the dataset folder "{subset}"' in line, line
    line = one_line(capsys, grid.main(grid_cli(private_root, subset / "runs", ["zeroshot"])))
    assert f'--out "{subset / "runs"}" lies inside the dataset folder "{subset}"' in line, line
    (tmp_path / "link").symlink_to(subset)  # through a link too
    line = one_line(capsys, train.cli(train_argv(private_root, tmp_path / "link" / "r", TRAINER, *OPTS,
                                                 dataset="Food53_27")))
    assert "lies inside the dataset folder" in line
    assert snapshot_tree(private_root) == before
    # beside the subset folders, under the same root, is where outputs may go
    assert grid.main(grid_cli(private_root, private_root / "runs", ["zeroshot"])) == 0


def test_a_link_to_a_file_as_out_is_not_called_dangling(toy_root, tmp_path, capsys):
    (tmp_path / "afile").write_text("mine\n")
    (tmp_path / "lfile").symlink_to(tmp_path / "afile")
    line = one_line(capsys, grid.main(grid_cli(toy_root, tmp_path / "lfile", ["zeroshot"])))
    assert "is a symbolic link to a file, not a directory" in line and "dangling" not in line, line
    assert (tmp_path / "afile").read_text() == "mine\n"


def test_grid_threads_above_the_cores_are_one_line(toy_root, tmp_path, capsys):
    """``--threads 100000``: libgomp ran out of memory, no error line, a stray log file left."""
    line = one_line(capsys, grid.main(grid_cli(toy_root, tmp_path / "g", ["zeroshot"], "--threads", "100000")))
    assert "--threads 100000: more than the" in line
    assert not (tmp_path / "g").exists()


def test_a_run_folder_as_the_grids_out_is_one_line(finished_grid, tmp_path, capsys):
    """The grid nested its whole tree inside a ``train.py`` run's folder (parse_test_res then read both)."""
    run = cell_results(finished_grid).parent
    before = snapshot_tree(run)
    line = one_line(capsys, grid.main(grid_cli(tmp_path, run, ["zeroshot"])))
    assert f'--out "{run}" is the folder of one run' in line, line
    assert snapshot_tree(run) == before


def test_a_closed_console_pipe_does_not_stop_the_grid(toy_root: Path, tmp_path: Path) -> None:
    """``scripts.grid ... | head -1``: the second cell's line met a closed pipe, a BrokenPipeError traceback
    (exit 1) stopped the grid with half its cells unrun. It goes on with its console silenced."""
    out = tmp_path / "g"
    argv = [sys.executable, "-m", "scripts.grid", *grid_cli(toy_root, out, ["fsnl", "coop"])]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().startswith("[1/2] ")
    proc.stdout.close()  # what `| head -1` does after its line
    err = proc.stderr.read() if proc.stderr is not None else ""
    assert proc.wait(timeout=600) == 0 and "Traceback" not in err, err[-2000:]
    assert len(list(out.rglob("results.json"))) == 2
