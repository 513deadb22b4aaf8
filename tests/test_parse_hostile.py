"""scripts.parse_test_res and scripts.plot_curves on hostile input: outputs aimed at a run's own files,
values that are not accuracies, copies that disagree, seeds that lack a number, bytes that are not
UTF-8, and plot sources / targets that are not what the tools write.

Every test builds the hostile input, asserts the exit code and the single ``error:`` line (or the
warning that names the file and the key) and that nothing was lost: the run tree is compared byte for
byte before and after.
"""
from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Dict

import pytest

from scripts import parse_test_res as ptr
from scripts import plot_curves

REPO = Path(__file__).resolve().parents[1]
RUN = "MiniPlants/shots_1/train/CLIP_Adapter/cfg"
VALUES = {1: (40.0, 60.0), 2: (50.0, 62.0), 3: (60.0, 64.0)}  # seed -> (OOP, IP)


def h(o: float, i: float) -> float:
    return 2 * o * i / (o + i)


def engine_payload(seed: int, oop: float, ip: float) -> Dict[str, Any]:
    """A results.json shaped as the engine writes it (trainers.cross_eval): subsets are the record,
    accuracy / metrics.accuracy / oop / ip copies of them, hmean derived."""
    return {
        "schema": 1, "kind": "run", "trainer": "CLIP_Adapter", "dataset": "MiniPlants", "sub_classes": "OOP",
        "shots": 1, "seed": seed, "accuracy": oop, "metrics": {"accuracy": oop, "macro_f1": 10.0},
        "subsets": {"OOP": {"accuracy": oop, "macro_f1": 10.0}, "IP": {"accuracy": ip, "macro_f1": 10.0}},
        "oop": oop, "ip": ip, "hmean": h(oop, ip), "loaded": None,
        "fingerprint": {"id": f"fp{seed}", "group": "g", "trainer": "CLIP_Adapter",
                        "config": {"TRAINER.NAME": "CLIP_Adapter", "DATASET.NUM_SHOTS": 1, "SEED": seed}},
    }


def results_path(root: Path, seed: int) -> Path:
    return root / RUN / f"seed{seed}" / "results.json"


@pytest.fixture()
def runs(tmp_path: Path) -> Path:
    """Three finished seeds, each with the files a run writes beside its results.json."""
    root = tmp_path / "out"
    for seed, (oop, ip) in VALUES.items():
        folder = root / RUN / f"seed{seed}"
        (folder / "adapter").mkdir(parents=True)
        results_path(root, seed).write_text(json.dumps(engine_payload(seed, oop, ip), indent=4))
        (folder / "config.yaml").write_text(f"# fingerprint: fp{seed}\nSEED: {seed}\n")
        (folder / "log.txt").write_text(f"* accuracy: {oop:.2f}%\n")
        (folder / "adapter" / "model.pth.tar-5").write_bytes(b"\x80weights")
    return root


def edit(root: Path, seed: int, change: Callable[[Dict[str, Any]], None]) -> Path:
    path = results_path(root, seed)
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))  # json writes NaN / Infinity as Python reads them back
    return path


def snapshot(root: Path) -> Dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def one_error_line(capsys: pytest.CaptureFixture) -> str:
    captured = capsys.readouterr()
    err = captured.err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert captured.out == "", "nothing may be printed before a refused output"
    return err.strip()


def seed_group(root: Path) -> ptr.GroupSummary:
    (group,) = ptr.collect(str(root))
    return group


# ------------------------------------------------------------------------------ outputs


@pytest.mark.parametrize("option", ["--json", "--md", "--csv"])
@pytest.mark.parametrize("target", ["seed1/results.json", "seed1/config.yaml", "seed1/log.txt", "seed1/notes.md",
                                    "seed1/adapter/model.pth.tar-5", "seed2/adapter/table.md"])
def test_an_output_never_lands_on_or_in_a_run(runs: Path, option: str, target: str,
                                              capsys: pytest.CaptureFixture) -> None:
    """``--json <a run's results.json>`` replaced it (the seed was then read as legacy); ``--md
    <config.yaml>`` too. Now any target inside a run folder is one line, before anything is written."""
    before = snapshot(runs)
    path = runs / RUN / target
    assert ptr.main([str(runs), option, str(path)]) == 2
    err = one_error_line(capsys)
    assert f"{option} {path}" in err
    assert snapshot(runs) == before


@pytest.mark.parametrize("option", ["--json", "--md", "--csv"])
def test_an_output_at_a_directory_is_one_line_before_any_output(runs: Path, tmp_path: Path, option: str,
                                                                 capsys: pytest.CaptureFixture) -> None:
    """It was a 29-line WriteError traceback after the other outputs had been written."""
    other = "--csv" if option != "--csv" else "--md"
    early = tmp_path / "early.out"
    assert ptr.main([str(runs), other, str(early), option, str(tmp_path)]) == 2
    err = one_error_line(capsys)
    assert f"{option} {tmp_path} is a directory" in err
    assert not early.exists()


def test_the_same_file_for_two_outputs_is_refused(runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    target = tmp_path / "both.txt"
    assert ptr.main([str(runs), "--md", str(target), "--json", str(target)]) == 2
    assert "--md and --json both name" in one_error_line(capsys)
    assert not target.exists()


def test_a_rerun_refreshes_its_own_outputs_and_nothing_else(runs: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    outs = {ext: tmp_path / f"table.{ext}" for ext in ("md", "csv", "json")}
    argv = [str(runs), "--table", "--shots", "1"] + [a for ext, p in outs.items() for a in (f"--{ext}", str(p))]
    assert ptr.main(argv) == 0
    edit(runs, 1, lambda d: d.update(engine_payload(1, 44.0, 60.0)))
    capsys.readouterr()
    assert ptr.main(argv) == 0  # the same command again replaces its own three files
    assert outs["md"].read_text() == capsys.readouterr().out
    cell = json.loads(outs["json"].read_text())["table"]["rows"][0]["cells"]["MiniPlants"]
    assert cell["mean"] == pytest.approx((h(44, 60) + h(50, 62) + h(60, 64)) / 3, abs=1e-5)
    # A file this tool did not write, of any of the three kinds, stays as it was.
    for ext in outs:
        mine = tmp_path / f"mine.{ext}"
        mine.write_text("my own notes\n")
        assert ptr.main([str(runs), f"--{ext}", str(mine)]) == 2
        assert "is not a" in one_error_line(capsys) and mine.read_text() == "my own notes\n"


@pytest.mark.parametrize("view", [[], ["--table", "--shots", "1"], ["--curves"]])
def test_every_view_is_recognised_as_this_tools_output(runs: Path, tmp_path: Path, view: list,
                                                       capsys: pytest.CaptureFixture) -> None:
    """The recognition a rerun relies on (the Markdown opening, the CSV header, the JSON keys) holds for
    every view; a results.json is never taken for an output."""
    outs = {ext: tmp_path / f"o.{ext}" for ext in ("md", "csv", "json")}
    assert ptr.main([str(runs), *view] + [a for ext, p in outs.items() for a in (f"--{ext}", str(p))]) == 0
    capsys.readouterr()
    assert outs["md"].read_text().startswith(ptr.MD_OPENINGS)
    assert ptr.written_md(outs["md"]) and ptr.written_csv(outs["csv"]) and ptr.written_json(outs["json"])
    assert not ptr.written_json(results_path(runs, 1)) and not ptr.written_md(outs["csv"])


def test_coop_view_output_is_recognised_and_json_is_refused(runs: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    """CoOp's seed*/ view writes text only: --json was ignored without a word."""
    exp = runs / RUN
    md = tmp_path / "coop.md"
    assert ptr.main([str(exp), "--md", str(md)]) == 0 and ptr.main([str(exp), "--md", str(md)]) == 0
    capsys.readouterr()
    assert md.read_text().startswith(ptr.MD_OPENINGS)
    assert ptr.main([str(exp), "--json", str(tmp_path / "c.json")]) == 2
    assert "--csv/--json do not apply" in one_error_line(capsys)
    assert not (tmp_path / "c.json").exists()


def test_refusal_in_a_real_process_is_one_stderr_line(runs: Path) -> None:
    before = snapshot(runs)
    target = results_path(runs, 2)
    proc = subprocess.run([sys.executable, "-m", "scripts.parse_test_res", str(runs), "--json", str(target)],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert snapshot(runs) == before


# ------------------------------------------------------------------------------ values


@pytest.mark.parametrize("key, value", [
    ("oop", math.nan), ("accuracy", math.nan), ("metrics.accuracy", math.nan), ("subsets.OOP.accuracy", math.nan),
    ("ip", math.inf), ("oop", -5), ("ip", 1e9), ("hmean", 106.76), ("oop", "62.2"), ("subsets.IP.accuracy", True),
    ("subsets.IP", [1]),
])
def test_a_value_that_is_not_an_accuracy_skips_the_file_with_a_warning(runs: Path, key: str, value: Any,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """NaN dropped one seed from the mean while Seeds said 3; -5 and 1e9 were averaged in (an H-mean of
    106.76 was shown); a string was converted. Now the file is skipped whole, naming the key."""
    def change(data: Dict[str, Any]) -> None:
        *parents, last = key.split(".")
        node = data
        for part in parents:
            node = node[part]
        node[last] = value

    bad = edit(runs, 3, change)
    with caplog.at_level(logging.WARNING, logger="scripts.parse_test_res"):
        group = seed_group(runs)
    assert group.seeds == [1, 2] and group.runs == 2
    assert group.oop.n == group.ip.n == group.hmean.n == group.accuracy.n == 2
    assert group.oop.mean == pytest.approx(45.0) and group.ip.mean == pytest.approx(61.0)
    warning = next(r.getMessage() for r in caplog.records if str(bad) in r.getMessage())
    assert warning.startswith(f"Skipping {bad}: {key} is ")


def test_a_seed_without_ip_is_counted_and_marked(runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """Deleting subsets.IP, ip and hmean of one seed: Seeds said 3 over an IP / H-mean of 2 seeds."""
    lacking = edit(runs, 3, lambda d: [d["subsets"].pop("IP"), d.pop("ip"), d.pop("hmean")])
    out = tmp_path / "s.json"
    with caplog.at_level(logging.WARNING, logger="scripts.parse_test_res"):
        assert ptr.main([str(runs), "--json", str(out)]) == 0
    md = capsys.readouterr().out
    row = next(line for line in md.splitlines() if "CLIP-Adapter" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3] == "3"  # Seeds: the runs of the row
    assert cells[4].endswith("± 10.00") and "(n=" not in cells[4]  # OOP over all three
    assert cells[5].endswith("(n=2)") and cells[6].endswith("(n=2)")  # IP and H-mean over two
    assert "(n=k): the mean of only k" in md
    (group,) = json.loads(out.read_text())["groups"]
    assert group["runs"] == 3 and group["oop"]["n"] == 3 and group["ip"]["n"] == group["hmean"]["n"] == 2
    assert any("ip mean is over 2 of 3 seeds" in r.getMessage() and str(lacking) in r.getMessage()
               for r in caplog.records)
    table = tmp_path / "t.csv"
    assert ptr.main([str(runs), "--table", "--shots", "1", "--csv", str(table)]) == 0
    assert "(n=2)" in capsys.readouterr().out
    header, row_csv = table.read_text().splitlines()[:2]
    fields = dict(zip(header.split(","), row_csv.split(",")))
    assert (fields["MiniPlants_n"], fields["MiniPlants_runs"]) == ("2", "3")


def test_a_top_level_copy_that_disagrees_is_a_warning_and_subsets_win(runs: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """An edited top-level ``oop: 99`` made the OOP and Accuracy columns disagree without a word."""
    path = edit(runs, 2, lambda d: d.update(oop=99, hmean=12.0))
    with caplog.at_level(logging.WARNING, logger="scripts.parse_test_res"):
        group = seed_group(runs)
    assert group.oop.mean == pytest.approx(50.0) == group.accuracy.mean and group.oop.n == 3
    assert group.hmean.mean == pytest.approx(sum(h(o, i) for o, i in VALUES.values()) / 3)
    messages = [r.getMessage() for r in caplog.records if str(path) in r.getMessage()]
    assert any("subsets.OOP.accuracy = 50 disagrees with oop = 99; using subsets.OOP.accuracy" in m for m in messages)
    assert any("hmean = 12 disagrees with H(OOP 50" in m for m in messages)


def test_a_results_json_that_is_not_utf8_is_a_warning(runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """A \\xff byte ended the scan in a UnicodeDecodeError traceback naming no file."""
    bad = results_path(runs, 1)
    bad.write_bytes(bad.read_bytes() + b"\xff")
    with caplog.at_level(logging.WARNING, logger="scripts.parse_test_res"):
        assert ptr.main([str(runs)]) == 0
        assert ptr.main([str(runs / RUN)]) == 0  # CoOp's view reads the same file
    out = capsys.readouterr().out
    assert "| 2 |" in out and "* accuracy: 55.00%" in out
    warnings = [r.getMessage() for r in caplog.records if "not UTF-8" in r.getMessage()]
    assert len(warnings) == 2 and all(str(bad) in w for w in warnings)


@pytest.mark.parametrize("entry, key", [
    ({"shots": 2, "accuracies": [10.0, math.nan], "seeds": [1, 2]}, "shots.2.accuracies[1]"),
    ({"shots": 2, "accuracies": [10.0, 20.0], "seeds": [1]}, "shots.2.seeds"),
    ({"shots": "two", "accuracies": [10.0], "seeds": [1]}, "shots.2.shots"),
    ({"shots": 2, "accuracies": "10", "seeds": [1]}, "shots.2.accuracies"),
])
def test_a_hostile_linear_probe_file_is_skipped_with_a_warning(tmp_path: Path, entry: Dict[str, Any], key: str,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """zip() cut a seed list silently; int("two") and a NaN accuracy were a traceback or a lost seed."""
    path = tmp_path / "out" / "MiniPlants" / "linear_probe" / "results.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"dataset": "MiniPlants", "sub_classes": "OOP",
                                "shots": {"1": {"shots": 1, "accuracies": [30.0], "seeds": [1]}, "2": entry}}))
    with caplog.at_level(logging.WARNING, logger="scripts.parse_test_res"):
        assert ptr.collect(str(tmp_path / "out")) == []
    assert any(m.startswith(f"Skipping {path}: {key} is ") for m in (r.getMessage() for r in caplog.records))


@pytest.mark.parametrize("line", ["* accuracy: 1.2.3%", "* accuracy: 150.00%"])
def test_a_log_accuracy_that_is_not_one_is_a_warning(tmp_path: Path, line: str,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    run = tmp_path / "old" / "MiniPlants" / "shots_1" / "train" / "CoOp" / "seed1"
    run.mkdir(parents=True)
    (run / "log.txt").write_text(f"Finish training\n{line}\n")
    with caplog.at_level(logging.WARNING, logger="scripts.parse_test_res"):
        assert ptr.collect(str(tmp_path / "old"), log_mode=True) == []
    assert any(r.getMessage().startswith(f"Skipping {run / 'log.txt'}") for r in caplog.records)


# ------------------------------------------------------------------------------ plot_curves


@pytest.fixture()
def curves_json(runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> Path:
    path = tmp_path / "c.json"
    assert ptr.main([str(runs), "--curves", "--json", str(path)]) == 0
    capsys.readouterr()
    return path


@pytest.mark.parametrize("payload, key", [
    ({}, "no 'groups' list"),
    ([1, 2], "no 'groups' list"),
    ({"groups": [{"dataset": "D", "method": "M", "shots": "a"}]}, "groups[0].shots is 'a', not an integer"),
    ({"groups": [{"dataset": "D", "method": "M", "shots": 1, "oop": {"mean": "62", "n": 1}}]},
     "groups[0].oop.mean is '62', not a number"),
    ({"groups": [{"dataset": "D", "method": "M", "shots": 1, "oop": {"mean": 1e9, "n": 1}}]},
     "groups[0].oop.mean is 1000000000.0, not a number in [0, 100]"),
    ({"groups": [{"method": "M", "shots": 1}]}, "groups[0].dataset is None, not a name"),
])
def test_a_plot_source_that_is_not_parse_test_res_json_is_one_line(tmp_path: Path, payload: Any, key: str,
                                                                   capsys: pytest.CaptureFixture) -> None:
    """``{}`` was a KeyError, ``"shots": "a"`` a ValueError traceback."""
    source = tmp_path / "src.json"
    source.write_text(json.dumps(payload))
    assert plot_curves.main([str(source), "--out", str(tmp_path / "fig")]) == 2
    err = one_error_line(capsys)
    assert err.startswith(f"error: {source}: ") and key in err, err
    assert not list(tmp_path.glob("fig*"))


@pytest.mark.parametrize("content", [b"{not json", b'{"groups": []}\xff'])
def test_a_plot_source_that_cannot_be_read_is_one_line(tmp_path: Path, content: bytes,
                                                       capsys: pytest.CaptureFixture) -> None:
    source = tmp_path / "src.json"
    source.write_bytes(content)
    assert plot_curves.main([str(source), "--out", str(tmp_path / "fig")]) == 2
    err = one_error_line(capsys)
    assert err.startswith(f"error: {source}: not ") and "parse_test_res --json" in err


def test_plot_targets_are_checked_like_the_tables(runs: Path, curves_json: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    """``--out X/x`` with a directory X/x.png was an IsADirectoryError traceback; a figure over a run's
    folder or over a foreign file is refused; a rerun replaces its own figures."""
    (tmp_path / "X" / "x.png").mkdir(parents=True)
    assert plot_curves.main([str(curves_json), "--out", str(tmp_path / "X" / "x")]) == 2
    assert f"{tmp_path / 'X' / 'x.png'} (from --out {tmp_path / 'X' / 'x'}) is a directory" in one_error_line(capsys)
    assert not (tmp_path / "X" / "x.pdf").exists()

    before = snapshot(runs)
    assert plot_curves.main([str(curves_json), "--out", str(runs / RUN / "seed1" / "fig")]) == 2
    assert "lies in the run folder" in one_error_line(capsys)
    assert snapshot(runs) == before

    foreign = tmp_path / "photo.png"
    foreign.write_bytes(b"\x89PNG\r\n\x1a\nnot a matplotlib figure")
    assert plot_curves.main([str(curves_json), "--out", str(tmp_path / "photo")]) == 2
    assert "is not a figure this tool wrote" in one_error_line(capsys)
    assert foreign.read_bytes() == b"\x89PNG\r\n\x1a\nnot a matplotlib figure"

    base = tmp_path / "fig" / "curves"
    assert plot_curves.main([str(curves_json), "--out", str(base)]) == 0
    first = Path(f"{base}.pdf").read_bytes()
    assert plot_curves.main([str(curves_json), "--out", str(base), "--band"]) == 0
    assert Path(f"{base}.pdf").read_bytes() != first and plot_curves.written_figure(Path(f"{base}.pdf"))
    assert not list(base.parent.glob(".*.tmp"))


def test_groups_round_trip_keeps_the_seed_counts(runs: Path, curves_json: Path) -> None:
    edit(runs, 3, lambda d: [d["subsets"].pop("IP"), d.pop("ip"), d.pop("hmean")])
    (direct,) = ptr.collect(str(runs))
    assert (direct.runs, direct.ip.n) == (3, 2)
    payload = {"hmean_convention": "per-seed", "spread": "std", "source": "results.json",
               "groups": ptr.summary_to_json([direct])}
    (back,) = ptr.groups_from_json(json.loads(json.dumps(payload)))
    assert (back.runs, back.ip.n, back.oop.n) == (3, 2, 3)
    legacy = dict(payload["groups"][0])
    del legacy["runs"]  # a JSON written before "runs" existed: the most any number counts
    (old,) = ptr.groups_from_json({"groups": [legacy]})
    assert old.runs == 3


def test_two_results_of_one_seed_that_disagree_are_named_whatever_their_phase(caplog):
    """A ``train.py`` run outside the layout (phase ``train``) and the grid's zero-shot cell (phase
    ``zeroshot``) of the same configuration and seed: one OOP value was dropped without a word."""
    a = ptr.RunRecord("Food53_27", "ZeroshotCLIP_openclip", 0, 1, oop=25.0, phase="train",
                                 sub_classes="OOP", path="out/results.json", config="c1")
    b = ptr.RunRecord("Food53_27", "ZeroshotCLIP_openclip", 0, 1, oop=75.0, phase="zeroshot",
                                 sub_classes="OOP", path="out/Food53_27/ZS/seed1/results.json", config="c1")
    with caplog.at_level(logging.WARNING):
        (merged,) = ptr.merge_seeds([b, a])
    assert merged.oop == 75.0 or merged.oop == 25.0
    assert "Results disagree for Food53_27 ZeroshotCLIP_openclip K=0 seed 1" in caplog.text
    assert "out/results.json" in caplog.text and "out/Food53_27/ZS/seed1/results.json" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        ptr.merge_seeds([a, ptr.RunRecord(**{**a.__dict__, "oop": 25.0, "phase": "zeroshot",
                                                                   "path": "elsewhere/results.json"})])
    assert "disagree" not in caplog.text  # the same number twice is no news


def test_linked_run_folders_and_files_are_read_where_they_are_found(runs: Path, tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """A seed folder linked in from another disk was left out without a word (``rglob`` does not follow
    folder links); a linked results.json was read at its target, outside the layout, and its run became
    a row of its own. A link loop ends, a linked folder reached twice counts once, and a results.json
    that is a directory is named as such."""
    elsewhere = tmp_path / "other_disk"
    elsewhere.mkdir()
    (runs / RUN / "seed2").rename(elsewhere / "seed2")
    (runs / RUN / "seed2").symlink_to(elsewhere / "seed2")
    (runs / RUN / "seed3" / "results.json").rename(elsewhere / "seed3.json")
    (runs / RUN / "seed3" / "results.json").symlink_to(elsewhere / "seed3.json")
    (runs / RUN / "loop").symlink_to(runs / "MiniPlants")  # a loop back up the tree
    (runs / RUN / "seed4" / "results.json").mkdir(parents=True)
    with caplog.at_level(logging.WARNING):
        group = seed_group(runs)
    assert sorted(group.seeds) == [1, 2, 3] and group.runs == 3
    assert group.oop.mean == pytest.approx(sum(o for o, _ in VALUES.values()) / 3)
    assert any("seed4/results.json: a directory" in r.getMessage() for r in caplog.records)


def _curve_run(root: Path, shots: int, seed: int, extra: Dict[str, Any]) -> None:
    payload = engine_payload(seed, *VALUES[seed])
    payload["shots"] = shots
    payload["fingerprint"]["id"] = f"fp{shots}-{seed}-{json.dumps(extra, sort_keys=True)}"
    payload["fingerprint"]["config"].update({"DATASET.NUM_SHOTS": shots, **extra})
    path = root / RUN.replace("shots_1", f"shots_{shots}") / f"seed{seed}" / "results.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(payload))


@pytest.mark.parametrize("split", [True, False, "optimizer"])
def test_a_curve_never_joins_points_of_two_configurations(tmp_path: Path, split: Any) -> None:
    """1-shot runs with one feature-view setting and 2-shot runs with another were one unlabelled curve
    (labels split only within a shot count). A key the sweep sets per shot count (the rule's learning
    rate, the schedule) still joins: that is one method's curve."""
    root = tmp_path / "out"
    for seed in (1, 2):
        _curve_run(root, 1, seed, {"OPTIM.LR": 0.1, "DATALOADER.FEATURE_CACHE.VIEWS": 1, "OPTIM.NAME": "sgd"})
        _curve_run(root, 2, seed, {"OPTIM.LR": 0.2, "DATALOADER.FEATURE_CACHE.VIEWS": 2 if split is True else 1,
                                   "OPTIM.MAX_EPOCH": 20, "OPTIM.NAME": "adam" if split == "optimizer" else "sgd"})
    curves = ptr.build_curves(ptr.collect(str(root)))["curves"]
    if split == "optimizer":  # "OPTIM." was schedule: runs of two optimizers were one curve
        assert sorted(c["label"] for c in curves) == ["CLIP-Adapter [OPTIM.NAME='adam']",
                                                      "CLIP-Adapter [OPTIM.NAME='sgd']"]
    elif split:
        assert sorted((c["label"], [k for k, _ in c["points"]]) for c in curves) == [
            ("CLIP-Adapter [DATALOADER.FEATURE_CACHE.VIEWS=1]", [1]),
            ("CLIP-Adapter [DATALOADER.FEATURE_CACHE.VIEWS=2]", [2])]
    else:
        assert [(c["label"], [k for k, _ in c["points"]]) for c in curves] == [("CLIP-Adapter", [1, 2])]


@pytest.mark.parametrize("trainer,shots,column", [("FSNL_openclip", -1, -1), ("FSNL_openclip", 4, 4),
                                                  ("ZeroshotCLIP_openclip", -1, 0), ("ZeroshotCLIP_openclip", 16, 0)])
def test_a_run_outside_the_layout_keeps_its_shots(tmp_path: Path, trainer: str, shots: int, column: int) -> None:
    """A trained run with ``NUM_SHOTS -1`` (all images) outside the layout was tabulated as shots 0, the
    zero-shot column; only a zero-shot trainer's run belongs there, whatever NUM_SHOTS it recorded."""
    run = tmp_path / "runs" / "somewhere" / "my_run"
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps({"trainer": trainer, "dataset": "Animals92_42", "seed": 1,
                                                  "accuracy": 50.0, "oop": 50.0, "shots": shots}))
    (group,) = ptr.collect(str(tmp_path / "runs"))
    assert group.shots == column and group.oop.mean == 50.0
