"""scripts.sweep / scripts.fsnl_rule / the shell wrappers: exact commands, the BS/LR rule, skip-if-done."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, Tuple

import pytest

from dassl import results
from lpclip import linear_probe as lp
from scripts import domains, fsnl_rule, sweep
from scripts.domains import DomainError, count_classes, resolve_domains, short_name
from scripts.run_identity import command_fingerprint
from scripts.sweep import Job, SweepSpec, build_jobs, run_jobs
from tests.test_lpclip import write_features

REPO = Path(__file__).resolve().parents[1]
FSNL_CFG = "configs/trainers/FSNL_openclip/vit_b16_ep200_standard.yaml"


def write_subset(root: Path, folder: str, num_classes: int, train: int = 16) -> None:
    """A split file in the LAION-Beyond layout (images are not needed to count classes) with ``train``
    training images per class (the sweep refuses shot counts above that) and one val / test image."""
    d = root / folder
    d.mkdir(parents=True)
    per_split = {"train": train, "val": 1, "test": 1}
    split = {
        s: {str(i * n + j): {"classname": f"{folder}_class{i}", "image_name": f"{s}{i}_{j}.jpg", "label": i}
            for i in range(num_classes) for j in range(n)}
        for s, n in per_split.items()
    }
    (d / f"split_Xin_{folder}.json").write_text(json.dumps(split))


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    # Class counts deliberately unlike the 400M ones baked into the registered names (92 / 53).
    root = tmp_path / "data"
    write_subset(root, "Animals7_OOP", 7)
    write_subset(root, "Animals3_IP", 3)
    write_subset(root, "Food43_OOP", 43)
    write_subset(root, "Food11_IP", 11)
    return root


def run_main(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, list[str], str]:
    rc = sweep.main(list(argv))
    out, err = capsys.readouterr()
    return rc, [ln for ln in out.splitlines() if ln], err


# ------------------------------------------------------------------------------ rule


@pytest.mark.parametrize(
    "num_classes, shots, bs, lr",
    [
        (92, 4, 368, 5.75e-4),      # Animals, spec §8.3
        (92, 16, 368, 5.75e-4),     # K >= 4 keeps 4·C
        (89, 1, 89, 1.390625e-4),   # Pokemon 1-shot: bc printed .00013906
        (50, 2, 100, 1.5625e-4),
        (113, 8, 452, 7.0625e-4),
    ],
)
def test_fsnl_bs_lr(num_classes: int, shots: int, bs: int, lr: float) -> None:
    got_bs, got_lr = fsnl_rule.fsnl_bs_lr(num_classes, shots)
    assert got_bs == bs
    assert got_lr == pytest.approx(lr, rel=1e-12)


def test_lr_is_not_truncated_like_bc() -> None:
    _, lr = fsnl_rule.fsnl_bs_lr(89, 1)
    assert fsnl_rule.format_lr(lr) == "0.0001390625"
    assert lr != pytest.approx(0.00013906, rel=1e-9)
    assert fsnl_rule.format_lr(fsnl_rule.fsnl_bs_lr(92, 4)[1]) == "0.000575"


@pytest.mark.parametrize("args", [(0, 4), (5, 0)])
def test_fsnl_bs_lr_rejects_nonsense(args: tuple[int, int]) -> None:
    with pytest.raises(ValueError):
        fsnl_rule.fsnl_bs_lr(*args)


def test_fsnl_rule_cli_counts_classes_on_disk(data: Path, capsys: pytest.CaptureFixture) -> None:
    assert fsnl_rule.main(["--root", str(data), "--dataset", "Food", "--shots", "2"]) == 0
    assert capsys.readouterr().out.split() == ["86", fsnl_rule.format_lr(86 / 128 * 2e-4)]
    assert fsnl_rule.main(["--root", str(data / "nowhere"), "--dataset", "Food", "--shots", "2"]) == 2


def test_count_classes_and_names(data: Path) -> None:
    assert count_classes(str(data), "Animals92_42", "OOP") == 7
    assert count_classes(str(data), "Animals92_42", "IP") == 3
    assert resolve_domains(["Animals", "insects", "Plants_Fugi113_56", "animals92_42"]) == [
        "Animals92_42", "Insects_Spiders106_52", "Plants_Fugi113_56"]
    assert short_name("Insects_Spiders106_52") == "Insects_Spiders"
    with pytest.raises(DomainError, match="Did you mean"):
        resolve_domains(["Animalz"])
    with pytest.raises(DomainError):
        count_classes(str(data), "Pokemon89_39", "OOP")  # no Pokemon folder under this root


# ------------------------------------------------------------------------------ commands


def expected_fsnl(root: Path, out: str, dataset: str, shots: int, seed: int, bs: int, lr: str, epochs: str = "200") -> str:
    outdir = f"{out}/{dataset}/shots_{shots}/train/FSNL_openclip_USE_CAPTION_True/MEPOCH_{epochs}_BS_{bs}_LR_{lr}/seed{seed}"
    return (
        f"python train.py --root {root} --seed {seed} --trainer FSNL_openclip "
        f"--dataset-config-file configs/datasets/{dataset}.yaml --config-file {FSNL_CFG} --output-dir {outdir} "
        "TRAINER.FSNL.FLE False TRAINER.FSNL.N_CTX 4 TRAINER.FSNL.CIFC True TRAINER.FSNL.USE_CAPTION True "
        f"DATASET.NUM_SHOTS {shots} TRAIN.CHECKPOINT_FREQ 10 TEST.NO_TEST False OPTIM.LR {lr} "
        f"OPTIM.MAX_EPOCH {epochs} DATALOADER.TRAIN_X.BATCH_SIZE {bs} DATASET.SUB_CLASSES OOP"
    )


def test_fsnl_dry_run_exact_commands(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = str(tmp_path / "out")
    rc, lines, err = run_main(capsys, "--method", "fsnl", "--root", str(data), "--out", out,
                              "--domains", "Animals", "Food", "--shots", "2", "8", "--seeds", "1", "3", "--dry-run")
    assert rc == 0
    # C = 7 (Animals) and 43 (Food) from disk; BS = min(K,4)·C; LR = BS/128·2e-4.
    expected = []
    for dataset, c in (("Animals92_42", 7), ("Food53_27", 43)):
        for k in (2, 8):
            bs = min(k, 4) * c
            lr = f"{bs / 128 * 2e-4:.12g}"
            expected += [expected_fsnl(data, out, dataset, k, s, bs, lr) for s in (1, 3)]
    assert lines == expected
    assert "8 pending, 0 skipped" in err


def test_fsnl_with_make_toy(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from datasets.make_toy import TOY_CLASSES, make_toy

    root = tmp_path / "toy"
    make_toy(str(root), domains=["Food53_27"], image_size=8, num_train=1, num_val=1, num_test=1)
    c = len(TOY_CLASSES["Food53_27"]["OOP"])
    rc, lines, _ = run_main(capsys, "--method", "fsnl", "--root", str(root), "--out", "o", "--domains", "Food",
                            "--shots", "1", "--seeds", "1", "--dry-run")
    assert rc == 0
    assert lines == [expected_fsnl(root, "o", "Food53_27", 1, 1, c, f"{c / 128 * 2e-4:.12g}")]


def test_opts_override_in_place_and_name_the_directory(data: Path, capsys: pytest.CaptureFixture) -> None:
    rc, lines, _ = run_main(capsys, "--method", "fsnl", "--root", str(data), "--out", "o", "--domains", "Animals",
                            "--shots", "4", "--seeds", "2", "--config", "configs/trainers/FSNL_openclip/cpu_smoke.yaml",
                            "--dry-run", "--opts", "OPTIM.MAX_EPOCH", "2", "MODEL.BACKBONE.NAME", "test-tiny")
    assert rc == 0 and len(lines) == 1
    tokens = lines[0].split()
    assert tokens[tokens.index("--config-file") + 1] == "configs/trainers/FSNL_openclip/cpu_smoke.yaml"
    assert tokens.count("OPTIM.MAX_EPOCH") == 1
    assert tokens[tokens.index("OPTIM.MAX_EPOCH") + 1] == "2"
    assert tokens[-2:] == ["MODEL.BACKBONE.NAME", "test-tiny"]
    # --config is honoured: no rule overrides the file's batch size and LR unless asked for.
    assert "/MEPOCH_2_BS_16_LR_0.05/" in tokens[tokens.index("--output-dir") + 1]
    assert "DATALOADER.TRAIN_X.BATCH_SIZE" not in tokens and "OPTIM.LR" not in tokens
    rc, lines, _ = run_main(capsys, "--method", "fsnl", "--root", str(data), "--out", "o", "--domains", "Animals",
                            "--shots", "4", "--seeds", "2", "--config", "configs/trainers/FSNL_openclip/cpu_smoke.yaml",
                            "--rule", "paper", "--dry-run", "--opts", "OPTIM.MAX_EPOCH", "2")
    assert rc == 0 and "/MEPOCH_2_BS_28_LR_" in lines[0]


def test_mini_config_set_is_the_mini_beyond_recipe(data: Path, capsys: pytest.CaptureFixture) -> None:
    """--config-set mini = the mini_cpu configs + the mini rule (50 epochs, 8x the paper's LR rule)."""
    rc, lines, _ = run_main(capsys, "--method", "fsnl", "--root", str(data), "--out", "o", "--domains", "Animals",
                            "--shots", "2", "--seeds", "1", "--config-set", "mini", "--dry-run")
    assert rc == 0 and len(lines) == 1
    tokens = lines[0].split()
    opts = dict(zip(tokens[tokens.index("--output-dir") + 2::2], tokens[tokens.index("--output-dir") + 3::2]))
    assert tokens[tokens.index("--config-file") + 1] == "configs/trainers/FSNL_openclip/mini_cpu.yaml"
    assert opts["OPTIM.MAX_EPOCH"] == "50" and opts["DATALOADER.TRAIN_X.BATCH_SIZE"] == "14"
    assert float(opts["OPTIM.LR"]) == pytest.approx(8 * 14 / 128 * 2e-4, rel=1e-12)


def by_method(data: Path, method: str, *extra: str) -> Dict[str, str]:
    spec = SweepSpec(method=method, root="D", out="O", domains=["Animals"], shots=[1, 8], seeds=[1])
    for k, v in zip(extra[::2], extra[1::2]):
        setattr(spec, k, v)
    return {j.label: j.command for j in build_jobs(spec)}


def test_baseline_commands(data: Path) -> None:
    prefix = "python train.py --root D --seed 1 --trainer"
    ds = "--dataset-config-file configs/datasets/Animals92_42.yaml"
    coop = by_method(data, "coop")
    assert coop["coop Animals92_42 K=8 seed=1"] == (
        f"{prefix} CoOp_openclip {ds} --config-file configs/trainers/CoOp_openclip/vit_b16_ep200_ctxv1.yaml "
        "--output-dir O/Animals92_42/shots_8/train/CoOp_openclip/CSC_False/vit_b16_ep200_ctxv1/seed1 "
        "TRAINER.COOP.N_CTX 4 TRAINER.COOP.CSC False TRAINER.COOP.CLASS_TOKEN_POSITION end "
        "DATASET.NUM_SHOTS 8 DATASET.SUB_CLASSES OOP"
    )
    cocoop = by_method(data, "cocoop")
    assert cocoop["cocoop Animals92_42 K=1 seed=1"] == (
        f"{prefix} CoCoOp_openclip {ds} "
        "--config-file configs/trainers/CoCoOp_openclip/vit_b16_c4_ep10_batch1_ctxv1.yaml "
        "--output-dir O/Animals92_42/shots_1/train/CoCoOp_openclip_vit_b16_c4_ep10_batch1_ctxv1/seed1 "
        "DATASET.NUM_SHOTS 1 TRAIN.CHECKPOINT_FREQ 10 DATASET.SUB_CLASSES OOP"
    )
    adapter = by_method(data, "clip_adapter")
    assert adapter["clip_adapter Animals92_42 K=1 seed=1"] == (
        f"{prefix} CLIP_Adapter {ds} --config-file configs/trainers/CLIP_Adapter/vit_b16_ep200_ctxv1.yaml "
        "--output-dir O/Animals92_42/shots_1/train/CLIP_Adapter/ImageA_vit_b16_ep200_ctxv1/seed1 "
        "DATASET.NUM_SHOTS 1 DATASET.SUB_CLASSES OOP"
    )
    taskres = by_method(data, "taskres")
    for k, cfg in ((1, "adam_lr2e-3_B256_ep100"), (8, "adam_lr2e-3_B256_ep200")):
        assert taskres[f"taskres Animals92_42 K={k} seed=1"] == (
            f"{prefix} TaskRes {ds} --config-file configs/trainers/TaskRes/{cfg}.yaml "
            f"--output-dir O/Animals92_42/shots_{k}/train/TaskRes/{cfg}/seed1 "
            f"DATASET.NUM_SHOTS {k} TRAINER.TaskRes.RESIDUAL_SCALE 0.5 DATASET.SUB_CLASSES OOP"
        )


def test_zeroshot_and_linear_probe_commands(capsys: pytest.CaptureFixture) -> None:
    rc, lines, _ = run_main(capsys, "--method", "zeroshot", "--root", "D", "--out", "O", "--domains", "Food",
                            "--dry-run")
    assert rc == 0
    assert lines == [
        "python train.py --root D --seed 3 --trainer ZeroshotCLIP_openclip "
        "--dataset-config-file configs/datasets/Food53_27.yaml "
        "--config-file configs/trainers/ZeroshotCLIP_openclip/vit_b16_ep50_ctxv1.yaml "
        "--output-dir O/Food53_27/ZeroshotCLIP_openclip/ZS_OOP/seed3 --eval-only DATASET.SUB_CLASSES OOP"
    ]
    rc, lines, _ = run_main(capsys, "--method", "linear_probe", "--root", "D", "--out", "O", "--domains", "Food",
                            "--dry-run")
    assert rc == 0 and len(lines) == 7
    assert lines[0] == (
        "python -m lpclip.feat_extractor --root D --output-dir O/clip_feat "
        "--config-file configs/trainers/CoOp_openclip/vit_b16_ep200_ctxv1_lpclip.yaml "
        "--dataset-config-file configs/datasets/Food53_27.yaml --split train --seed 1 DATASET.SUB_CLASSES OOP"
    )
    assert [ln.split()[-5] for ln in lines[:6]] == ["train", "val", "test"] * 2
    assert [ln.split()[-1] for ln in lines[:6]] == ["OOP"] * 3 + ["IP"] * 3
    # the sweep's --shots reach the probe (it ran its default 1 2 4 8 16 whatever the sweep asked)
    assert lines[6] == (
        "python -m lpclip.linear_probe --feature-dir O/clip_feat --dataset Food53_27 --sub-classes OOP "
        "--output-dir O/Food53_27/linear_probe --shots 1 2 4 8 16"
    )
    rc, lines, _ = run_main(capsys, "--method", "linear_probe", "--root", "D", "--out", "O", "--domains", "Food",
                            "--shots", "2", "8", "--dry-run")
    assert rc == 0 and lines[6].endswith("--output-dir O/Food53_27/linear_probe --shots 2 8")


def test_default_domains_are_the_nine(capsys: pytest.CaptureFixture) -> None:
    rc, lines, _ = run_main(capsys, "--method", "coop", "--root", "D", "--out", "O", "--dry-run")
    assert rc == 0
    assert len(lines) == 9 * 5 * 3
    datasets = {ln.split("configs/datasets/")[1].split(".yaml")[0] for ln in lines}
    assert datasets == set(sweep.LAION_BEYOND_DOMAINS)


def test_missing_data_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc, lines, err = run_main(capsys, "--method", "fsnl", "--root", str(tmp_path / "none"), "--out", "o",
                              "--domains", "Animals", "--dry-run")
    assert rc == 2 and not lines
    assert "Cannot count the OOP classes of Animals92_42" in err


# ------------------------------------------------------------------------------ skip / run


def test_skip_if_results_exist(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    argv = ["--method", "coop", "--root", str(data), "--out", str(out), "--domains", "Animals", "--shots", "1", "2",
            "--seeds", "1", "--dry-run"]
    _, before, _ = run_main(capsys, *argv)
    done_dir = out / "Animals92_42/shots_2/train/CoOp_openclip/CSC_False/vit_b16_ep200_ctxv1/seed1"
    done_dir.mkdir(parents=True)
    (done_dir / "results.json").write_text("{}")  # unversioned: no fingerprint, so not "this job's run"
    rc, after, err = run_main(capsys, *argv)
    assert rc == 2 and after == []
    assert err.count("error:") == 1 and "no fingerprint" in err and "--force" in err
    job = next(j for j in build_jobs(SweepSpec(method="coop", root=str(data), out=str(out), domains=["Animals"],
                                                shots=[2], seeds=[1])))
    results.write_results(str(done_dir), {"trainer": "CoOp_openclip", "dataset": "Animals92_42", "seed": 1,
                                          "accuracy": 1.0}, command_fingerprint(job.argv))
    rc, after, err = run_main(capsys, *argv)
    assert rc == 0
    assert after == [ln for ln in before if str(done_dir) not in ln] and len(after) == 1
    assert "1 pending, 1 skipped" in err
    _, forced, _ = run_main(capsys, *argv, "--force")
    assert forced == before


def test_yaml_dry_run_carries_done_markers(capsys: pytest.CaptureFixture) -> None:
    import yaml

    rc = sweep.main(["--method", "clip_adapter", "--root", "D", "--out", "O", "--domains", "Food", "--shots", "4",
                     "--seeds", "1", "--dry-run", "--format", "yaml"])
    payload = yaml.safe_load(capsys.readouterr().out)
    assert rc == 0
    (entry,) = payload["commands"]
    assert entry["done"] == "O/Food53_27/shots_4/train/CLIP_Adapter/ImageA_vit_b16_ep200_ctxv1/seed1/results.json"
    assert entry["cmd"].startswith("python train.py --root D --seed 1 --trainer CLIP_Adapter")


def test_run_jobs_summary(tmp_path: Path) -> None:
    # Stand-in jobs have no fingerprint (not train.py / lpclip), so their marker is a plain flag file: a
    # results.json of theirs would prove nothing (scripts.run_identity.command_state) and they would rerun.
    def job(name: str, code: str) -> Job:
        return Job(("python", "-c", code), str(tmp_path / name / "done.flag"), name)

    ok = job("ok", f"import os; os.makedirs({str(tmp_path / 'ok')!r}); open({str(tmp_path / 'ok/done.flag')!r}, 'w')")
    silent = job("silent", "pass")  # exits 0 but writes nothing: not done, so it must count as failed
    crash = job("crash", "raise SystemExit(3)")
    done = job("done", "raise SystemExit('must not run')")
    (tmp_path / "done").mkdir()
    (tmp_path / "done/done.flag").write_text("")

    summary = run_jobs([ok, silent, crash, done], cwd=str(tmp_path))
    assert [j.label for j in summary.ran] == ["ok"]
    assert [j.label for j in summary.skipped] == ["done"]
    assert {j.label: why for j, why in summary.failed} == {
        "silent": f"exit code 0 but {silent.done} was not written", "crash": "exit code 3"}
    assert summary.line() == "4 job(s): ran 1, skipped 1, failed 2"

    again = run_jobs([ok, crash], cwd=str(tmp_path), fail_fast=True)
    assert [j.label for j in again.skipped] == ["ok"] and len(again.failed) == 1


def test_shell_wrapper_dry_run_from_elsewhere(data: Path, tmp_path: Path) -> None:
    cwd = tmp_path / "somewhere"
    cwd.mkdir()
    env = dict(os.environ, DRY_RUN="1", DOMAINS="Animals", SHOTS="4", SEEDS="2", PYTHON=sys.executable)
    rel_data = os.path.relpath(data, cwd)
    res = subprocess.run(["bash", str(REPO / "scripts/fsnl/train.sh"), rel_data, "out"], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    root = f"{cwd}/{rel_data}"
    assert res.stdout.splitlines() == [expected_fsnl(Path(root), f"{cwd}/out", "Animals92_42", 4, 2, 28, "4.375e-05")]

    env.pop("DRY_RUN")
    res = subprocess.run(["bash", str(REPO / "scripts/coop/train.sh")], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 2 and "DATA OUT" in res.stderr


@pytest.mark.parametrize("script", ["fsnl/train.sh", "coop/train.sh", "cocoop/train.sh", "clip_adapter/train.sh",
                                    "taskres/train.sh", "zeroshot/eval.sh", "linear_probe/run.sh"])
def test_every_wrapper_names_its_method(script: str) -> None:
    text = (REPO / "scripts" / script).read_text()
    method = script.split("/")[0]
    assert f'run_sweep.sh" {method} "$@"' in text
    assert os.access(REPO / "scripts" / script, os.X_OK)


def test_config_set_beside_config_is_refused(capsys: pytest.CaptureFixture) -> None:
    """--config replaces every method's configs, so --config-set beside it was silently ignored."""
    rc, lines, err = run_main(capsys, "--method", "coop", "--root", "D", "--out", "O", "--domains", "Food",
                              "--config-set", "mini", "--config", "cpu_smoke", "--dry-run")
    assert rc == 2 and not lines and err.count("\n") == 1
    assert err.startswith("error: --config-set mini and --config cpu_smoke: --config replaces")


@pytest.mark.parametrize("method,opts,option", [
    ("coop", ("OUTPUT_DIR", "/tmp/one_folder"), "--out"), ("coop", ("SEED", "5"), "--seeds"),
    ("coop", ("DATASET.NUM_SHOTS", "4"), "--shots"), ("zeroshot", ("DATASET.NAME", "Food53_27"), "--domains"),
    ("linear_probe", ("DATASET.ROOT", "/elsewhere"), "--root"),
])
def test_opts_the_plan_sets_are_refused(capsys: pytest.CaptureFixture, method: str, opts: Tuple[str, str],
                                        option: str) -> None:
    """A key the plan sets for every job, given in --opts, overrode the plan: every run into one folder,
    a seed-5 run filed under seed1. One line naming the option to use, before any job."""
    rc, lines, err = run_main(capsys, "--method", method, "--root", "D", "--out", "O", "--domains", "Food",
                              "--dry-run", "--opts", "OPTIM.LR", "0.1", *opts)
    assert rc == 2 and not lines and err.count("\n") == 1
    assert err.startswith(f"error: --opts {opts[0]}: set for each {method} job from {option}; use {option}")


def test_the_probe_jobs_take_a_seed_in_opts(capsys: pytest.CaptureFixture) -> None:
    """The probe's extraction is seeded (``--seed 1``, scripts.sweep.PROBE_SEED: random weights are drawn the
    same on every call); a SEED in --opts comes after it and wins."""
    rc, lines, err = run_main(capsys, "--method", "linear_probe", "--root", "D", "--out", "O", "--domains",
                              "Food", "--dry-run", "--opts", "SEED", "1")
    assert rc == 0 and "error" not in err
    assert sum("SEED 1" in line for line in lines if "feat_extractor" in line) == 6


def test_missing_config_is_caught_before_running(capsys: pytest.CaptureFixture) -> None:
    rc, lines, err = run_main(capsys, "--method", "coop", "--root", "D", "--out", "O", "--domains", "Food",
                              "--config", "no_such_cfg", "--dry-run")
    assert rc == 2 and not lines
    assert "configs/trainers/CoOp_openclip/no_such_cfg.yaml" in err


def test_force_lets_every_job_overwrite(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """--force reruns a job whose folder holds another configuration's run. train.py and both lpclip tools
    refuse such a folder unless told to overwrite (before, a --force'd probe or extractor job was either
    silently replacing or, once they checked, refusing), so every job the sweep starts gets
    FSNL_OVERWRITE=1 in its environment; its command line stays as printed. A real probe job here."""
    feat = tmp_path / "feat"
    write_features(str(feat))
    out = tmp_path / "probe"
    common = ["--feature-dir", str(feat), "--dataset", "Toy9_9", "--sub-classes", "IP", "--num-run", "2",
              "--num-step", "1", "--output-dir", str(out)]
    assert lp.main([*common, "--shots", "1"]) == 0
    argv = ("python", "-m", "lpclip.linear_probe", *common, "--shots", "2")
    job = sweep.Job(argv, str(out / "results.json"), "probe Toy9_9")
    monkeypatch.delenv(results.OVERWRITE_ENV, raising=False)
    with pytest.raises(sweep.RunConflict):  # without --force: refused before anything runs
        sweep.run_jobs([job], force=False)
    assert sorted(json.loads((out / "results.json").read_text())["shots"]) == ["1"]

    seen = []
    real_run = subprocess.run

    def spy(cmd, cwd=None, env=None, **kwargs):
        seen.append((list(cmd), (env or {}).get(results.OVERWRITE_ENV)))
        return real_run(cmd, cwd=cwd, env=env, **kwargs)

    monkeypatch.setattr(sweep.subprocess, "run", spy)
    summary = sweep.run_jobs([job], force=True)
    assert not summary.failed and sorted(json.loads((out / "results.json").read_text())["shots"]) == ["2"]
    jobs = [c for c in seen if c[0][1:3] == ["-m", "lpclip.linear_probe"]]
    assert jobs == [([sys.executable, *argv[1:]], "1")]  # the printed command, run as is


def test_sweep_exit_status_follows_its_jobs(tmp_path: Path) -> None:
    """A sweep whose jobs all stopped on a deterministic error (exit 2: the job's one error line is on
    the console) exits 2 as well; any other failure makes it 1."""
    def job(code: int, name: str) -> Job:
        return Job(("python", "-c", f"raise SystemExit({code})"), str(tmp_path / name / "results.json"), name)

    summary = run_jobs([job(2, "a"), job(2, "b")], cwd=str(tmp_path))
    assert summary.exit_codes == [2, 2] and sweep.exit_status(summary.exit_codes) == 2
    summary = run_jobs([job(2, "a"), job(3, "b"), job(0, "c")], cwd=str(tmp_path))
    assert summary.exit_codes == [2, 3, None] and sweep.exit_status(summary.exit_codes) == 1


def test_repeated_shots_and_seeds_plan_one_job_each_and_negative_seeds_are_refused(data: Path,
                                                                                   capsys: pytest.CaptureFixture) -> None:
    """`--shots 1 1` or `--seeds 1 1` printed two identical commands into one output folder; a negative
    seed (an unseeded run) was accepted."""
    jobs = build_jobs(SweepSpec(method="coop", root=str(data), out="o", domains=["Animals"], shots=[2, 1, 2],
                                seeds=[1, 1]))
    assert len(jobs) == len({j.done for j in jobs}) == 2
    rc, lines, err = run_main(capsys, "--method", "coop", "--root", str(data), "--out", "o", "--domains", "Animals",
                              "--seeds", "-5", "--dry-run")
    assert rc == 2 and not lines and err.strip() == "error: --seeds -5: every seed must be >= 0 (a negative seed runs unseeded)"


@pytest.mark.parametrize("method", ["coop", "fsnl", "clip_adapter"])
def test_shots_no_class_has_are_one_line_when_the_data_is_here(data: Path, tmp_path: Path, method: str,
                                                                capsys: pytest.CaptureFixture) -> None:
    """Hostile: ``--shots 4 32`` on data with 16 training images per class planned (and ran) 32-shot jobs
    that each failed on their own; without ``--dry-run`` the 4-shot jobs ran first. Now the plan stops
    with one line before any job, naming the shot count and the largest class. Commands planned for
    another machine's data (nothing under ``--root`` here) are still planned, for a method that does not
    need the class count."""
    out = tmp_path / "out"
    for extra in (("--dry-run",), ()):
        rc, lines, err = run_main(capsys, "--method", method, "--root", str(data), "--out", str(out), "--domains",
                                  "Animals", "Food", "--shots", "4", "32", "16", "64", *extra)
        assert rc == 2 and lines == [] and err.count("\n") == 1, err
        assert err.startswith("error: --shots 32 64: no class of Animals92_42 under --root has that many training "
                              "images (at most 16)"), err
        assert not out.exists()
    if method == "coop":
        rc, lines, _ = run_main(capsys, "--method", method, "--root", str(tmp_path / "elsewhere"), "--out", str(out),
                                "--domains", "Animals", "--shots", "32", "--seeds", "1", "--dry-run")
        assert rc == 0 and len(lines) == 1 and "DATASET.NUM_SHOTS 32" in lines[0]


def test_a_relative_root_is_read_where_the_jobs_read_it(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture) -> None:
    """Hostile: ``--root data`` typed outside the repository root. The jobs run from the repository root
    and read ``<repo>/data``, but the sweep counted FSNL's classes (and checked the shots) in
    ``./data``: a missing folder stopped it, or another copy's class count set the batch size and LR."""
    monkeypatch.setattr(domains, "REPO_ROOT", data.parent)  # the jobs' directory holds data/
    (data.parent / "configs").symlink_to(REPO / "configs")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    plan = ("--method", "fsnl", "--out", "o", "--domains", "Food", "--shots", "4", "--seeds", "1", "--dry-run")
    rc, relative, err = run_main(capsys, *plan, "--root", "data")
    assert rc == 0 and len(relative) == 1, err
    _, absolute, _ = run_main(capsys, *plan, "--root", str(data))
    assert relative == [line.replace(str(data), "data") for line in absolute]  # Food's 43 classes both times
    rc, _, err = run_main(capsys, "--method", "coop", "--root", "data", "--out", "o", "--domains", "Food",
                          "--shots", "32", "--dry-run")
    assert rc == 2 and "at most 16" in err


@pytest.mark.parametrize("opts,expected", [
    (("OPTIM.WEIGHT_DECAY", "-1"), "OPTIM.WEIGHT_DECAY must be a finite number >= 0, got -1.0"),
    (("OPTIM.MAX_EPOCH", "0"), "OPTIM.MAX_EPOCH must be a positive integer"),
    (("DATALOADER.TRAIN_X.SAMPLER", "bogus"), "DATALOADER.TRAIN_X.SAMPLER: unknown sampler 'bogus'"),
])
def test_a_config_value_every_job_refuses_is_one_line_before_any_job(
        toy_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
        opts: Tuple[str, str], expected: str) -> None:
    """Every job failed on its own with the same line (4 jobs: 4 failures, each after seconds of
    imports); now train.py's own check runs on each job first: one line naming the first job, exit 2,
    nothing started and no --out created. --dry-run still plans (it may be for another machine)."""
    monkeypatch.setattr(sweep, "run_jobs", lambda *a, **k: pytest.fail("a job ran"))
    out = tmp_path / "o"
    common = ["--method", "coop", "--root", str(toy_root), "--out", str(out), "--domains", "Food",
              "--shots", "1", "2", "--seeds", "1", "2", "--config-set", "smoke"]
    rc, lines, err = run_main(capsys, *common, "--opts", *opts)
    assert rc == 2 and not lines and err.count("\n") == 1, err
    assert err.startswith("error: coop Food53_27 K=1 seed=1: ") and expected in err, err
    assert not out.exists()
    rc, lines, _ = run_main(capsys, "--dry-run", *common, "--opts", *opts)
    assert rc == 0 and len(lines) == 4


@pytest.mark.parametrize("root", ["file", "empty"])
def test_a_root_without_the_data_is_refused_before_any_job(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                           monkeypatch: pytest.MonkeyPatch, root: str) -> None:
    """A real sweep with --root a file or an empty folder started every job, each failing with the same
    error line (2 lines per job and exit 2). Now one line before any job; --dry-run still plans for
    another machine's copy of the data."""
    path = tmp_path / "root"
    if root == "file":
        path.write_text("not a folder")
    else:
        path.mkdir()
    monkeypatch.setattr(sweep, "run_jobs", lambda *a, **k: pytest.fail("a job ran"))
    for method in ("coop", "zeroshot", "linear_probe"):
        rc, lines, err = run_main(capsys, "--method", method, "--root", str(path), "--out", str(tmp_path / "o"),
                                  "--domains", "Food", "--shots", "1", "--seeds", "1", "2", "--config-set", "smoke")
        assert rc == 2 and not lines and err.count("\n") == 1 and err.startswith("error: "), err
        assert (f"--root {path} is not a directory" if root == "file" else "No OOP folder for prefix 'Food'") in err
    rc, lines, _ = run_main(capsys, "--method", "zeroshot", "--root", str(path), "--out", str(tmp_path / "o"),
                            "--domains", "Food", "--dry-run")
    assert rc == 0 and lines


def test_two_opts_values_never_share_a_folder(toy_root: Path, tmp_path: Path) -> None:
    """``CTX_INIT "a  photo/of"`` and ``"a--photo-of"`` were both the folder ``..._a--photo-of``: the
    second sweep was refused for the first's run, and the suggested ``--force`` would have replaced it.
    A value that loses characters in its folder name carries a digest of itself; others keep their name."""
    def folder(value: str) -> str:
        spec = sweep.SweepSpec(method="coop", root=str(toy_root), out=str(tmp_path), domains=["Food"], shots=[1],
                               seeds=[1], config_set="smoke", opts=["TRAINER.COOP.CTX_INIT", value])
        (job,) = sweep.build_jobs(spec)
        return Path(job.done).parent.parent.name

    assert folder("a--photo-of") == "TRAINER.COOP.CTX_INIT_a--photo-of"
    lossy = folder("a  photo/of")
    assert lossy.startswith("TRAINER.COOP.CTX_INIT_a--photo-of~") and len(lossy) == len("TRAINER.COOP.CTX_INIT_a--photo-of") + 7
    assert lossy != folder("a //photo of") and folder(lossy.split("_", 1)[1].split("_", 1)[1]) != lossy
    # a value that spells a second pair is not the folder of the two pairs
    spelled = folder("a_TRAINER.COOP.PREC_fp32")
    assert spelled.startswith("TRAINER.COOP.CTX_INIT_a_TRAINER.COOP.PREC_fp32~")
