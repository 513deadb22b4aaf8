"""The benchmark scripts run (``--tiny``, test-tiny model), print their tables, and their numbers add up.

No timing assertions: only that each script works, reports what it measured consistently, and that
the reference-style construction it times behaves like the reference (spec §2.5).
"""
from __future__ import annotations

import json
import statistics

import pytest
import torch

from benchmarks import (
    common,
    eval_throughput,
    fsnl_step,
    grid_estimate,
    prompt_building,
    prompt_prefix,
    run_all,
    text_tower,
)
from benchmarks import linear_probe as linear_probe_bench


def tiny_args(tmp_path, name):
    # Keep the session's thread count (the benchmarks call torch.set_num_threads).
    return ["--tiny", "--threads", str(torch.get_num_threads()), "--repeats", "2", "--warmup", "0",
            "--json", str(tmp_path / f"{name}.json")]


def test_prompt_building_smoke(tmp_path, capsys):
    prompt_building.main(tiny_args(tmp_path, "pb"))
    printed = capsys.readouterr().out
    assert "| class prompts | 10 | 10 | 16 |" in printed and "| captions |" in printed
    data = json.loads((tmp_path / "pb.json").read_text())
    assert data["checks"] and all(data["checks"].values())
    assert [r["C"] for r in data["rows"] if r["what"] == "class prompts"] == [10, 20]
    for row in data["rows"]:
        assert len(row["ours_times"]) == len(row["reference_times"]) == 2
        assert row["ours_s"] == statistics.median(row["ours_times"])
        assert row["ratio"] == pytest.approx(statistics.median(row["reference_times"]) / row["ours_s"])
        assert row["untrimmed_ratio"] == pytest.approx(row["reference_s"] / row["untrimmed_s"])
        assert row["length"] < 77
        pairs = [a / b for a, b in zip(row["reference_times"], row["ours_times"])]
        assert row["paired_ratio"] == pytest.approx(statistics.median(pairs))


@pytest.fixture(scope="module")
def tiny_clip():
    return common.load_model("test-tiny", torch.device("cpu"))


def test_reference_style_keeps_substring_matching(tiny_clip):
    """B4 kept on purpose: "ant" fires inside "plant", and the learned rows land where its BPE was."""
    tok, emb = tiny_clip.tokenizer, tiny_clip.model.token_embedding
    names = ["ant", "giant anteater"]
    learned = {n: torch.randn(len(tok.encode(n)), emb.weight.shape[1]) for n in names}
    text = "Plant near a giant anteater"
    got, ids = prompt_building.reference_text2embedding(text, names, learned, tok, emb, 77)
    pieces = ["pl", "ant", " near a ", "giant anteater"]
    want_ids = [49406] + [t for p in pieces for t in tok.encode(p)] + [49407]
    assert ids[:len(want_ids)].tolist() == want_ids and not ids[len(want_ids):].any()
    want = emb.weight.detach()[torch.tensor(want_ids + [0] * (77 - len(want_ids)))].clone()
    pos = 1 + len(tok.encode("pl"))
    want[pos:pos + len(learned["ant"])] = learned["ant"]
    pos += len(learned["ant"]) + len(tok.encode(" near a "))
    want[pos:pos + len(learned["giant anteater"])] = learned["giant anteater"]
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_reference_style_length_budget(tiny_clip):
    """Over-long text: the trailing text piece is cut to the room left, SOT/EOT kept (spec §2.5 step 4)."""
    tok, emb = tiny_clip.tokenizer, tiny_clip.model.token_embedding
    learned = {"ant": torch.zeros(len(tok.encode("ant")), emb.weight.shape[1])}
    rest = " lorem" * 100
    _, ids = prompt_building.reference_text2embedding("ant" + rest, ["ant"], learned, tok, emb, 77)
    room = 75 - len(tok.encode("ant"))
    assert ids.tolist() == [49406] + tok.encode("ant") + tok.encode(rest)[:room] + [49407]


def test_reference_swap_puts_own_name_in_another_class_caption():
    import random

    names = ["spotted owl", "golden gecko"]
    caps = ["A Spotted Owl on a branch.", "two golden gecko on a rock"]
    out = prompt_building.reference_swap_captions(caps, names, random.Random(0))
    assert out == ["two spotted owl on a rock", "a golden gecko on a branch."]
    with pytest.raises(ValueError):
        prompt_building.reference_swap_captions(["no name here"], names, random.Random(0))


def test_fsnl_step_smoke(tmp_path, capsys):
    fsnl_step.main(tiny_args(tmp_path, "step") + ["--profile", "--profile-rows", "5"])
    printed = capsys.readouterr().out
    for mode in ("reference-style", "ours, online", "ours, cached", "bare text fwd+bwd"):
        assert f"| {mode} | 2 |" in printed
    data = json.loads((tmp_path / "step.json").read_text())
    rows = {r["mode"]: r for r in data["rows"]}
    ref = rows["reference-style"]["median_s"]
    for row in rows.values():
        assert row["median_s"] == statistics.median(row["times_s"])
        assert row["speedup_vs_reference"] == pytest.approx(ref / row["median_s"])
        pairs = [a / b for a, b in zip(rows["reference-style"]["times_s"], row["times_s"])]
        assert row["paired_speedup_vs_reference"] == pytest.approx(statistics.median(pairs))
        assert row["peak_bytes"] >= 0
    for mode in ("reference-style", "ours, online", "ours, cached"):
        parts = rows[mode]["breakdown_s"]
        assert parts["text forward"] > 0 and parts["prompt/caption construction"] > 0
        assert sum(parts[k] for k in fsnl_step.COMPONENTS) == pytest.approx(parts["total"], rel=1e-6, abs=1e-9)
    # The modes really differ in what they run: only the cached one skips the image encoder.
    assert rows["ours, cached"]["breakdown_s"]["image encoder"] == 0
    assert rows["reference-style"]["breakdown_s"]["image encoder"] > 0
    assert rows["ours, online"]["breakdown_s"]["image encoder"] > 0
    assert data["lengths"]["class_prompt_length"] < data["lengths"]["context_length"] == 77
    assert len(data["targets"]) == 3 + ("ours, cached, bf16 autocast" in rows)  # bf16 mode where the CPU has it
    # Work counts: the baseline does the most; prefix reuse + length buckets cut the cached step's work.
    flops = {mode: row["gemm_flops"]["total"] for mode, row in rows.items()}
    assert flops["reference-style"] > flops["ours, online"] > flops["ours, cached"] > 0
    assert flops["ours, cached"] < flops["ours, cached, plain truncation"]
    ops = data["profile"]
    assert 0 < len(ops) <= 5 and "Profile of one extra" in printed
    assert [o["self_s"] for o in ops] == sorted((o["self_s"] for o in ops), reverse=True)
    assert any("addmm" in o["op"] or "linear" in o["op"] or "mm" in o["op"] for o in ops)


def test_eval_throughput_smoke(tmp_path, capsys):
    eval_throughput.main(tiny_args(tmp_path, "eval"))
    printed = capsys.readouterr().out
    assert "| test(), first call | 2 |" in printed and "| test(), second call | 2 |" in printed
    data = json.loads((tmp_path / "eval.json").read_text())
    assert data["images"] == 24
    rows = data["rows"]
    assert [r["mode"] for r in rows] == ["encode_image (pre-loaded)", "test(), first call", "test(), second call"]
    for row in rows:
        assert row["images_per_s"] == pytest.approx(24 / statistics.median(row["times_s"]))
        assert row["vs_encode_image"] == pytest.approx(rows[0]["median_s"] / row["median_s"])


def test_text_tower_smoke(tmp_path, capsys):
    """Six modes (train / eval × three paths), speed-ups = ratios of the recorded medians, paths agree."""
    text_tower.main(tiny_args(tmp_path, "tt"))
    printed = capsys.readouterr().out
    assert "| train: written-out blocks, pooled-only last block |" in printed
    data = json.loads((tmp_path / "tt.json").read_text())
    assert data["max_abs_diff"] < 1e-5
    modes = data["modes"]
    assert sorted(modes) == sorted(f"{k}: {p}" for k in ("train", "eval") for p in text_tower.PATHS)
    for mode in modes.values():
        assert mode["median_s"] == pytest.approx(statistics.median(mode["times_s"]))
        assert len(mode["times_s"]) == 2


def test_prompt_prefix_smoke(tmp_path, capsys):
    """CoOp and CoCoOp, each every prompt in full vs prefix once + continuations (prefix copied per
    prompt, or attended in place); all ways agree."""
    prompt_prefix.main(tiny_args(tmp_path, "pp"))
    assert "| CoCoOp: prefix once, in place |" in capsys.readouterr().out
    data = json.loads((tmp_path / "pp.json").read_text())
    assert data["max_abs_diff"] < 1e-5
    assert sorted(data["modes"]) == sorted(
        f"{m}: {w}" for m in ("CoOp", "CoCoOp")
        for w in ("every prompt in full", "prefix once, copied per prompt", "prefix once, in place"))
    for mode in data["modes"].values():
        assert mode["median_s"] == pytest.approx(statistics.median(mode["times_s"]))


def test_run_all_assembles_sections():
    info = common.machine_info(torch.device("cpu"), 1)
    cmd = run_all.command("fsnl_step", run_all.parse_args(["--threads", "3"]), "/tmp/x.json")
    assert run_all.shown(cmd) == "python -m benchmarks.fsnl_step --device cpu --prec fp32 --threads 3 --profile"
    text = run_all.assemble(
        [{"name": "fsnl_step", "command": "python -m benchmarks.fsnl_step", "elapsed_s": 12.0,
          "returncode": 0, "markdown": "| a |\n|---|"},
         {"name": "eval_throughput", "command": "python -m benchmarks.eval_throughput", "elapsed_s": 1.0,
          "returncode": 3, "stderr": "Traceback: boom"}],
        info, "Benchmark results (cpu)", 90.0, "python -m benchmarks.run_all")
    assert text.startswith("# Benchmark results (cpu)\n")
    assert "## fsnl_step" in text and "| a |" in text and "(12 s)" in text
    assert "FAILED (exit 3)" in text and "boom" in text
    assert info["cpu"] in text and "1.5 min" in text


def test_linear_probe_benchmark_smoke(tmp_path, capsys):
    """Both solvers ran the same protocol on the same samples; the reported totals and ratio add up."""
    result = linear_probe_bench.main(tiny_args(tmp_path, "lp"))
    printed = capsys.readouterr().out
    assert "| shots | sklearn | torch (batched) | ratio |" in printed and "Target: ratio >= 20x" in printed
    data = json.loads((tmp_path / "lp.json").read_text())
    assert [r["shots"] for r in data["rows"]] == [1, 2]
    for row in data["rows"]:
        assert len(row["sklearn_times"]) == len(row["torch_times"]) == 2
        assert row["sklearn_s"] == statistics.median(row["sklearn_times"])
        assert row["sklearn_accuracy"] == pytest.approx(statistics.mean(row["sklearn_accuracies"]))
        assert row["difference_pt"] == pytest.approx(row["torch_accuracy"] - row["sklearn_accuracy"])
    assert data["ratio"] == pytest.approx(data["sklearn_total_s"] / data["torch_total_s"])
    assert result["max_difference_pt"] == max(abs(r["difference_pt"]) for r in data["rows"])
    assert "converged_accuracy" not in data["rows"][0] and data["flop_floor"] is None


def test_linear_probe_benchmark_flop_floor(tmp_path, capsys):
    """``--floor``: the GFLOP follow from the counted rows, the floor from the GFLOP and the measured bmm
    speed, the budget from scikit-learn's total; and the printed line says the same numbers."""
    linear_probe_bench.main(tiny_args(tmp_path, "lpf") + ["--floor", "--repeats", "1"])
    printed = capsys.readouterr().out
    data = json.loads((tmp_path / "lpf.json").read_text())
    floor = data["flop_floor"]
    assert floor["evaluations"] > 0 and floor["rows"] >= floor["evaluations"]
    assert floor["gflop"] == pytest.approx(floor["rows"] * data["dim"] * data["classes"] * 4 / 1e9)
    assert floor["floor_s"] == pytest.approx(floor["gflop"] / floor["bmm_gflops"])
    assert floor["budget_s"] == pytest.approx(data["sklearn_total_s"] / 20)
    assert f"cover {floor['rows']:,} padded rows = {floor['gflop']:.1f} GFLOP" in printed


def test_linear_probe_benchmark_converged_column(tmp_path, capsys):
    """``--converged`` adds the protocol with float64 fits run to the optimum: its mean equals an
    independent run of :func:`lpclip.linear_probe.probe_runs_torch` with those options, and the two
    printed differences are computed from it."""
    import numpy as np

    from lpclip import linear_probe as lp

    linear_probe_bench.main(tiny_args(tmp_path, "lpc") + ["--converged", "--repeats", "1"])
    printed = capsys.readouterr().out
    assert "| converged acc | sklearn − converged | torch − converged |" in printed
    data = json.loads((tmp_path / "lpc.json").read_text())
    feats = linear_probe_bench.synthetic_features(data["classes"], data["dim"], 0)
    for row in data["rows"]:
        runs = lp.probe_runs_torch(feats, row["shots"], list(range(1, data["runs"] + 1)), data["num_step"],
                                   **linear_probe_bench.CONVERGED)
        assert row["converged_accuracy"] == pytest.approx(np.mean([r["accuracy"] for r in runs]))
        line = f"| {row['shots']} |"
        printed_row = next(t for t in printed.splitlines() if t.startswith(line))
        assert printed_row.endswith(f"| {row['converged_accuracy']:.2f} | "
                                    f"{row['sklearn_accuracy'] - row['converged_accuracy']:+.2f} | "
                                    f"{row['torch_accuracy'] - row['converged_accuracy']:+.2f} |")


def test_grid_estimate_counts_follow_the_spec():
    """The GPU estimate's exact part: class counts of spec §4.6, FSNL's 200/400/800 steps of spec §8.3,
    and CoOp / CoCoOp steps from their paper configs' epochs and batch sizes (Dassl drops the last
    partial batch), recomputed here by hand."""
    oop = [92, 50, 54, 59, 53, 106, 59, 113, 89]
    ip = [42, 23, 28, 27, 27, 52, 30, 56, 39]
    assert [grid_estimate.class_counts(d) for d in grid_estimate.LAION_BEYOND_DOMAINS] == list(zip(oop, ip))
    unit = grid_estimate.Flops(prompt_fwd=1.0, prompt_train=10.0, prefix_fwd=100.0, prefix_train=1e3,
                               caption_train=1e4, image_fwd=1e5)
    work = grid_estimate.grid_work(unit, grid_estimate.METHODS, grid_estimate.LAION_BEYOND_DOMAINS,
                                   (1, 2, 4, 8, 16), (1, 2, 3), test_per_class=5)

    def steps(epochs, batch):
        return sum(3 * epochs * (k * c // batch if k * c >= batch else 1) for c in oop for k in (1, 2, 4, 8, 16))

    assert work["fsnl"].steps == 3 * 9 * (200 + 200 + 200 + 400 + 800) == 48_600
    assert work["coop"].steps == steps(200, 128)
    assert work["cocoop"].steps == steps(10, 16)
    assert work["fsnl"].cells == work["coop"].cells == 9 * 5 * 3 and work["linear_probe"].cells == 9
    # FSNL: per step one prefix, C prompts and BS = min(K, 4)·C captions, with backward
    fsnl = sum(3 * (200 if k <= 4 else 200 * k // 4) * (1e3 + c * 10.0 + min(k, 4) * c * 1e4)
               for c in oop for k in (1, 2, 4, 8, 16))
    assert work["fsnl"].flops == pytest.approx(fsnl)
    # CoCoOp evaluates C prompts per test image, on the OOP and the IP test splits
    evals = sum(3 * (o * 5 * (100.0 + o * 1.0) + i * 5 * (100.0 + i * 1.0)) for o, i in zip(oop, ip)
                for _ in (1, 2, 4, 8, 16))
    assert work["cocoop"].parts["eval"] == pytest.approx(evals)
    assert work["clip_adapter"].flops == 0 and work["clip_adapter"].steps > 0


def test_grid_estimate_smoke(tmp_path, capsys):
    result = grid_estimate.main(tiny_args(tmp_path, "ge") + ["--tflops-fp32", "40", "--step-ms", "5"])
    assert result == 0
    printed = capsys.readouterr().out
    assert "An estimate, not a measurement" in printed and "minutes, fp32 at 40 TFLOPS" in printed
    data = json.loads((tmp_path / "ge.json").read_text())
    f = data["flops"]
    assert 0 < f["prompt_fwd"] < f["prompt_train"] and f["caption_train"] > f["prompt_train"]
    for prec, tflops in data["assumptions"]["tflops"].items():
        fsnl = data["methods"]["fsnl"]
        assert fsnl["seconds"][prec] == pytest.approx(fsnl["flops"] / (tflops * 1e12) + fsnl["steps"] * 5e-3)
        parts = sum(m["seconds"][prec] for m in data["methods"].values()) + data["image_seconds"][prec]
        assert data["total_seconds"][prec] == pytest.approx(parts)


@pytest.mark.parametrize("what", ["user-json", "weights", "threads", "threads-above-cores", "repeats"])
def test_a_benchmark_mistake_is_one_line_before_any_work(tmp_path, capsys, what):
    """``--json`` overwrote whatever it named (a user's file, the committed weights: exit 0), and argument
    mistakes were a bare line with exit 1. Now one ``error:`` line, exit 2, the file untouched."""
    target = tmp_path / ("mini_clip.safetensors" if what == "weights" else "mine.json")
    target.write_bytes(b"\x00weights" if what == "weights" else b'{"mine": 1}')
    argv = tiny_args(tmp_path, "pb")
    if what in ("user-json", "weights"):
        argv[argv.index("--json") + 1] = str(target)
    elif what.startswith("threads"):
        argv[argv.index("--threads") + 1] = "-1" if what == "threads" else "100000"
    else:
        argv[argv.index("--repeats") + 1] = "0"
    before = target.read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        prompt_building.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert target.read_bytes() == before and not (tmp_path / "pb.json").exists()
    if what in ("user-json", "weights"):
        assert f"--json {target} exists and is not a benchmark result this tool wrote" in err[0]
    if what == "threads-above-cores":  # torch and OpenBLAS took them all: the timings measured thrashing
        assert "--threads 100000: more than the" in err[0]


def test_run_all_never_replaces_a_users_report(tmp_path, capsys, monkeypatch):
    """``run_all --out notes.md`` replaced the user's notes.md and the notes.json beside it (exit 0)."""
    monkeypatch.setattr(run_all.subprocess, "run", lambda *a, **k: pytest.fail("a benchmark ran"))
    for name, text in (("notes.md", "# my notes\n"), ("notes.json", '{"mine": 1}')):
        (tmp_path / name).write_text(text)
    for out in (tmp_path / "notes.md", tmp_path / "other.md"):
        if out.name == "other.md":
            (tmp_path / "other.json").write_text('{"mine": 2}')
        with pytest.raises(SystemExit) as exit_info:
            run_all.main(["--tiny", "--only", "prompt_building", "--out", str(out)])
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 2 and len(err) == 1 and "is not a benchmark" in err[0], err
    assert (tmp_path / "notes.md").read_text() == "# my notes\n" and (tmp_path / "other.json").read_text() == '{"mine": 2}'


@pytest.mark.parametrize("bench, argv, expected", [
    (linear_probe_bench, ["--tiny", "--shots", "0", "-3"], "argument --shots: 0; must be >= 1"),
    (eval_throughput, ["--tiny", "--images", "0"], "argument --images: 0; must be >= 1"),
])
def test_a_count_below_one_is_one_line(capsys, bench, argv, expected):
    """``--shots 0 -3`` was a numpy traceback mid-benchmark; ``--images 0`` silently ran the default 24."""
    with pytest.raises(SystemExit) as exit_info:
        bench.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and err[0].startswith(f"error: {expected}"), err
