"""scripts.parse_test_res on synthetic result trees with known statistics (both H-mean conventions)."""
from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path
from typing import Any, Dict, List

import pytest

from scripts import parse_test_res as ptr

T975_DF2 = 4.302652729911275  # Student t quantile 0.975 with 2 degrees of freedom
FSNL = "FSNL_openclip_USE_CAPTION_True"
COOP = "CoOp_openclip"


def h(o: float, i: float) -> float:
    return 2 * o * i / (o + i)


def put(root: Path, rel: str, payload: Dict[str, Any]) -> None:
    path = root / rel / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))


FSNL_VALUES = {  # (dataset, K) -> per-seed (oop, ip)
    ("Animals92_42", 4): [(50.0, 40.0), (60.0, 45.0), (70.0, 35.0)],
    ("Food53_27", 4): [(80.0, 30.0), (90.0, 30.0), (85.0, 60.0)],
    ("Food53_27", 1): [(60.0, 30.0), (62.0, 30.0), (64.0, 30.0)],
}
COOP_OOP = [30.0, 32.0, 34.0]
COOP_IP = [20.0, 25.0, 30.0]


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "out"
    for (dataset, k), values in FSNL_VALUES.items():
        # BS/LR differ per domain and K: the method key must not depend on them.
        bs = {"Animals92_42": 368, "Food53_27": 212}[dataset] * min(k, 4) // 4
        for seed, (o, i) in enumerate(values, 1):
            put(root, f"{dataset}/shots_{k}/train/{FSNL}/MEPOCH_200_BS_{bs}_LR_{bs / 640000:.12g}/seed{seed}", {
                "trainer": "FSNL_openclip", "dataset": dataset, "sub_classes": "OOP", "shots": k, "seed": seed,
                "accuracy": o, "oop": o, "ip": i, "hmean": h(o, i),
            })
    # CoOp the reference way: an OOP training run and a separate eval-only IP run per seed.
    for seed, (o, i) in enumerate(zip(COOP_OOP, COOP_IP), 1):
        method = f"{COOP}/CSC_False/vit_b16_ep200_ctxv1/seed{seed}"
        put(root, f"Animals92_42/shots_4/train/{method}", {"sub_classes": "OOP", "accuracy": o, "oop": o})
        put(root, f"Animals92_42/shots_4/test_IP/{method}", {"sub_classes": "IP", "accuracy": i, "ip": i})
    for dataset, (o, i) in (("Animals92_42", (20.0, 40.0)), ("Food53_27", (15.0, 58.0))):
        put(root, f"{dataset}/ZeroshotCLIP_openclip/ZS_OOP/seed3",
            {"sub_classes": "OOP", "shots": -1, "seed": 3, "accuracy": o, "oop": o, "ip": i})
    put(root, "Animals92_42/ZeroshotCLIP_openclip/ZS_IP/seed3", {"sub_classes": "IP", "accuracy": 99.0, "ip": 99.0})
    # TaskRes cannot be evaluated on IP: shows in curves, not in the H-mean table.
    put(root, "Food53_27/shots_4/train/TaskRes/adam_lr2e-3_B256_ep100/seed1", {"sub_classes": "OOP", "accuracy": 55.0})
    return root


def run(capsys: pytest.CaptureFixture, *argv: str) -> str:
    assert ptr.main(list(argv)) == 0
    return capsys.readouterr().out


def groups_by_key(payload: Dict[str, Any]) -> Dict[tuple, Dict[str, Any]]:
    return {(g["dataset"], g["method"], g["shots"]): g for g in payload["groups"]}


def test_summary_per_seed(tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out_json = tmp_path / "s.json"
    md = run(capsys, str(tree), "--json", str(out_json))
    assert "H-mean convention: per-seed" in md
    payload = json.loads(out_json.read_text())
    assert payload["hmean_convention"] == "per-seed"
    groups = groups_by_key(payload)
    for (dataset, k), values in FSNL_VALUES.items():
        g = groups[(dataset, FSNL, k)]
        oops, ips = [o for o, _ in values], [i for _, i in values]
        hs = [h(o, i) for o, i in values]
        assert g["label"] == "FSNL" and g["seeds"] == [1, 2, 3]
        assert g["oop"]["mean"] == pytest.approx(statistics.mean(oops), abs=1e-6)
        assert g["oop"]["std"] == pytest.approx(statistics.stdev(oops), abs=1e-6)
        assert g["ip"]["mean"] == pytest.approx(statistics.mean(ips), abs=1e-6)
        assert g["hmean"]["mean"] == pytest.approx(statistics.mean(hs), abs=1e-6)
        assert g["hmean"]["std"] == pytest.approx(statistics.stdev(hs), abs=1e-6)
        assert g["oop"]["ci95"] == pytest.approx(T975_DF2 * statistics.stdev(oops) / 3 ** 0.5, abs=1e-5)
    coop = groups[("Animals92_42", COOP, 4)]  # OOP and IP came from different folders
    assert coop["oop"]["mean"] == pytest.approx(32.0)
    assert coop["ip"]["mean"] == pytest.approx(25.0)
    assert coop["accuracy"]["mean"] == pytest.approx(32.0)  # the training run's own accuracy
    assert coop["hmean"]["mean"] == pytest.approx(statistics.mean(h(o, i) for o, i in zip(COOP_OOP, COOP_IP)), abs=1e-6)
    zs = groups[("Animals92_42", "ZeroshotCLIP_openclip", 0)]
    assert (zs["oop"]["mean"], zs["ip"]["mean"]) == (20.0, 40.0)  # the ZS_OOP run's cross-eval IP wins
    assert zs["label"] == "OpenCLIP (zero-shot)"
    taskres = groups[("Food53_27", "TaskRes", 4)]
    assert taskres["oop"]["mean"] == 55.0 and taskres["hmean"]["n"] == 0


def test_from_means_convention_differs(tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out_json = tmp_path / "m.json"
    md = run(capsys, str(tree), "--hmean", "from-means", "--json", str(out_json))
    assert "H-mean convention: from-means" in md
    g = groups_by_key(json.loads(out_json.read_text()))[("Food53_27", FSNL, 4)]
    values = FSNL_VALUES[("Food53_27", 4)]
    expected = h(statistics.mean(o for o, _ in values), statistics.mean(i for _, i in values))
    per_seed = statistics.mean(h(o, i) for o, i in values)
    assert g["hmean"]["mean"] == pytest.approx(expected, abs=1e-6)
    assert abs(expected - per_seed) > 1.0  # the two conventions really differ on this data
    assert g["hmean"]["std"] is None


def test_table(tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    paths = {ext: tmp_path / f"t.{ext}" for ext in ("md", "csv", "json")}
    md = run(capsys, str(tree), "--table", "--shots", "4", "--md", str(paths["md"]), "--csv", str(paths["csv"]),
             "--json", str(paths["json"]))
    assert paths["md"].read_text() == md
    table = json.loads(paths["json"].read_text())["table"]
    assert table["domains"] == ["Animals92_42", "Food53_27"]
    rows = {r["label"]: r for r in table["rows"]}
    assert list(rows) == ["OpenCLIP (zero-shot)", "CoOp", "FSNL"]  # paper order; TaskRes has no H-mean
    fsnl_animals = statistics.mean(h(o, i) for o, i in FSNL_VALUES[("Animals92_42", 4)])
    fsnl_food = statistics.mean(h(o, i) for o, i in FSNL_VALUES[("Food53_27", 4)])
    assert rows["FSNL"]["cells"]["Food53_27"]["mean"] == pytest.approx(fsnl_food, abs=1e-6)
    assert rows["FSNL"]["avg"] == pytest.approx((fsnl_animals + fsnl_food) / 2, abs=1e-6)
    assert rows["OpenCLIP (zero-shot)"]["avg"] == pytest.approx((h(20, 40) + h(15, 58)) / 2)
    assert rows["CoOp"]["complete"] is False

    lines = md.splitlines()
    assert "| Method | Animals | Food | Avg |" in lines
    fsnl_line = next(ln for ln in lines if ln.startswith("| FSNL |"))
    sd = statistics.stdev(h(o, i) for o, i in FSNL_VALUES[("Animals92_42", 4)])
    assert fsnl_line == (f"| FSNL | {fsnl_animals:.2f} ± {sd:.2f} | {fsnl_food:.2f} ± "
                         f"{statistics.stdev(h(o, i) for o, i in FSNL_VALUES[('Food53_27', 4)]):.2f} | "
                         f"{(fsnl_animals + fsnl_food) / 2:.2f} |")
    assert any(ln.startswith("| CoOp |") and ln.endswith("* |") for ln in lines)

    with open(paths["csv"], newline="") as f:
        rows_csv: List[Dict[str, str]] = list(csv.DictReader(f))
    fsnl_csv = next(r for r in rows_csv if r["label"] == "FSNL")
    assert float(fsnl_csv["Animals92_42"]) == pytest.approx(fsnl_animals, abs=1e-5)
    assert float(fsnl_csv["avg"]) == pytest.approx((fsnl_animals + fsnl_food) / 2, abs=1e-5)


def test_table_no_spread_and_other_shots(tree: Path, capsys: pytest.CaptureFixture) -> None:
    md = run(capsys, str(tree), "--table", "--shots", "1", "--no-spread")
    fsnl_line = next(ln for ln in md.splitlines() if ln.startswith("| FSNL |"))
    expected = statistics.mean(h(o, i) for o, i in FSNL_VALUES[("Food53_27", 1)])
    assert fsnl_line == f"| FSNL | - | {expected:.2f} | {expected:.2f}* |"
    assert "±" not in fsnl_line


def test_curves(tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out_csv, out_json = tmp_path / "c.csv", tmp_path / "c.json"
    md = run(capsys, str(tree), "--curves", "--csv", str(out_csv), "--json", str(out_json))
    assert "### Food53_27" in md and "| Method | 0 | 1 | 4 |" in md
    with open(out_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    food_fsnl = {int(r["shots"]): float(r["oop_mean"]) for r in rows
                 if r["dataset"] == "Food53_27" and r["label"] == "FSNL"}
    assert food_fsnl == {1: pytest.approx(62.0), 4: pytest.approx(85.0)}
    zs = [r for r in rows if r["label"] == "OpenCLIP (zero-shot)" and r["dataset"] == "Food53_27"]
    assert [(int(r["shots"]), float(r["oop_mean"])) for r in zs] == [(0, 15.0)]
    curves = json.loads(out_json.read_text())["curves"]
    assert any(c["zero_shot"] and c["method"] == "ZeroshotCLIP_openclip" for c in curves)


def test_method_depth_keeps_variants_apart(tmp_path: Path) -> None:
    root = tmp_path / "out"
    for use_caption, acc in (("True", 70.0), ("False", 60.0)):
        for lr in ("0.0001", "0.0002"):  # rule-derived part: must not split the method
            put(root, f"Animals92_42/shots_4/train/FSNL_openclip_USE_CAPTION_{use_caption}/MEPOCH_200_BS_1_LR_{lr}/seed1",
                {"sub_classes": "OOP", "oop": acc, "ip": 40.0})
    groups = ptr.collect(str(root), method_depth=2)
    assert sorted(g.method for g in groups) == [
        "FSNL_openclip_USE_CAPTION_False/MEPOCH_200", "FSNL_openclip_USE_CAPTION_True/MEPOCH_200"]
    assert {g.label for g in groups} == {"FSNL_openclip_USE_CAPTION_False/MEPOCH_200",
                                         "FSNL_openclip_USE_CAPTION_True/MEPOCH_200"}  # same paper name: raw keys


@pytest.mark.parametrize("depth", ["-1", "-5"])
def test_a_negative_method_depth_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture, depth: str) -> None:
    """Accepted before, and read as depth 1."""
    (tmp_path / "out").mkdir()
    assert ptr.main([str(tmp_path / "out"), "--method-depth", depth]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --method-depth {depth}: must be >= 0"), err


def test_linear_probe_and_field_fallback(tmp_path: Path) -> None:
    root = tmp_path / "out"
    put(root, "Animals92_42/linear_probe", {
        "method": "Linear probe", "dataset": "Animals92_42", "sub_classes": "OOP",
        "shots": {"1": {"shots": 1, "accuracies": [10.0, 12.0, 17.0], "seeds": [1, 2, 3]},
                  "4": {"shots": 4, "accuracies": [30.0, 31.0], "seeds": [1, 2]}},
    })
    put(root, "elsewhere/run7", {"trainer": "CoOp_openclip", "dataset": "Food53_27", "shots": 2, "seed": 5,
                                 "sub_classes": "OOP", "accuracy": 44.0, "oop": 44.0, "ip": 22.0})
    groups = {(g.dataset, g.method, g.shots): g for g in ptr.collect(str(root))}
    lp = groups[("Animals92_42", "linear_probe", 1)]
    assert lp.label == "Linear probe" and lp.oop.n == 3
    assert lp.oop.mean == pytest.approx(13.0) and lp.oop.std == pytest.approx(statistics.stdev([10, 12, 17]))
    assert groups[("Animals92_42", "linear_probe", 4)].oop.mean == pytest.approx(30.5)
    fallback = groups[("Food53_27", "CoOp_openclip", 2)]
    assert fallback.seeds == [5] and fallback.hmean.mean == pytest.approx(h(44, 22))


def write_log(path: Path, accuracies: List[float]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["Loading trainer", "epoch [1/10] loss 1.0"]
    for acc in accuracies:
        lines += ["=> result", "* total: 100", "* correct: 50", f"* accuracy: {acc:.2f}%", "* error: 1.00%"]
    path.write_text("\n".join(lines) + "\n")


def test_log_mode(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "old"
    base = "Animals92_42/shots_4/{}/CoOp_openclip/CSC_False/vit_b16_ep200_ctxv1/seed{}"
    write_log(root / base.format("train", 1) / "log.txt", [10.0, 30.0, 62.95])  # last occurrence wins
    write_log(root / base.format("test_IP", 1) / "log.txt", [40.0])
    write_log(root / base.format("train", 2) / "log.txt", [1.0])
    write_log(root / base.format("train", 2) / "log.txt-2024-05-01-10-00-00", [55.0])  # newer Dassl log
    write_log(root / base.format("test_IP", 2) / "log.txt", [44.0])
    write_log(root / "Animals92_42/ZeroshotCLIP_openclip/ZS_OOP/seed3/log.txt", [20.0])
    write_log(root / "Animals92_42/ZeroshotCLIP_openclip/ZS_IP/seed3/log.txt", [40.0])
    # A run of this code base: its log ends with the automatic IP evaluation, so it must be ignored.
    write_log(root / base.format("train", 3) / "log.txt", [70.0, 10.0])
    (root / base.format("train", 3) / "results.json").write_text("{}")

    out_json = tmp_path / "log.json"
    run(capsys, str(root), "--log-mode", "--json", str(out_json))
    payload = json.loads(out_json.read_text())
    assert payload["source"] == "log"
    groups = groups_by_key(payload)
    coop = groups[("Animals92_42", COOP, 4)]
    assert coop["seeds"] == [1, 2]
    assert coop["oop"]["mean"] == pytest.approx((62.95 + 55.0) / 2)
    assert coop["ip"]["mean"] == pytest.approx(42.0)
    assert coop["hmean"]["mean"] == pytest.approx((h(62.95, 40.0) + h(55.0, 44.0)) / 2, abs=1e-5)
    zs = groups[("Animals92_42", "ZeroshotCLIP_openclip", 0)]
    assert zs["hmean"]["mean"] == pytest.approx(h(20.0, 40.0), abs=1e-5)


def test_empty_directory_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert ptr.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "no results.json files" in err


def test_table_at_shots_without_runs_is_an_error(tree: Path, capsys: pytest.CaptureFixture) -> None:
    """--table --shots 8 used to print an empty table with rc 0; now one line naming the shots found."""
    assert ptr.main([str(tree), "--table", "--shots", "8"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert "no run trained with 8 shots" in err and "shots found: 1 4" in err, err


def _fingerprinted(trainer: str, shots: int, seed: int, acc: float) -> Dict[str, Any]:
    return {"schema": 1, "kind": "run", "trainer": trainer, "dataset": "Animals92_42", "sub_classes": "OOP",
            "shots": shots, "seed": seed, "accuracy": acc, "oop": acc, "ip": acc, "hmean": acc, "loaded": None,
            "fingerprint": {"id": f"{trainer}{shots}{seed}", "trainer": trainer,
                            "config": {"TRAINER.NAME": trainer, "DATASET.NUM_SHOTS": shots}}}


def test_results_json_wins_over_its_folder(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A zero-shot result written into a CoOp folder used to be a "CoOp" row, and a NUM_SHOTS -1 run
    in shots_1/ a 1-shot row; the fingerprinted results.json now decides (with a warning)."""
    root = tmp_path / "out"
    put(root, f"Animals92_42/shots_4/train/{COOP}/CSC_False/vit_b16_ep200_ctxv1/seed1",
        _fingerprinted("ZeroshotCLIP_openclip", 4, 1, 11.0))
    put(root, f"Animals92_42/shots_4/train/{COOP}/CSC_False/vit_b16_ep200_ctxv1/seed2",
        _fingerprinted(COOP, 4, 2, 22.0))
    put(root, f"Animals92_42/shots_1/train/{FSNL}/MEPOCH_200/seed1", _fingerprinted("FSNL_openclip", -1, 1, 33.0))
    put(root, f"Animals92_42/shots_1/train/{FSNL}/MEPOCH_200/seed2", _fingerprinted("FSNL_openclip", 1, 2, 44.0))
    records = {(r.method, r.shots, r.seed): r.accuracy for r in ptr.load_results(str(root))}
    assert records == {("ZeroshotCLIP_openclip", 4, 1): 11.0, (COOP, 4, 2): 22.0,
                       (FSNL, -1, 1): 33.0, (FSNL, 1, 2): 44.0}
    assert "labelled by its trainer" in caplog.text and "counted as -1-shot" in caplog.text
