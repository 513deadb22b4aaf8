"""The results contract (dassl.results): schema round trip, the run fingerprint, and every consumer's
refusal to reuse, merge or drop a run silently (issue "Trustworthy numbers", items 1-4)."""
from __future__ import annotations

import json
import logging
import math
import statistics
from pathlib import Path

import numpy as np
import pytest

import configs
import train
from dassl import results
from dassl.engine import expected_fingerprint
from datasets.make_toy import make_toy
from lpclip import linear_probe as lp
from scripts import launch, sweep
from scripts import parse_test_res as ptr
from scripts.run_identity import command_fingerprint
from tests.helpers import REPO, dataset_config, save_tiny_weights, trainer_config

FSNL_SMOKE = str(trainer_config("FSNL_openclip"))


def fp_of(cfg_dict, **parts):
    return results.fingerprint(cfg_dict, code={"commit": "test", "dirty": False, "packages": {}}, **parts)


# ------------------------------------------------------------------------------ schema


def test_round_trip_through_writer_and_reader(tmp_path: Path) -> None:
    fp = fp_of({"TRAINER": {"NAME": "X"}, "OPTIM": {"LR": 0.1}, "OUTPUT_DIR": "a"}, data={"OOP": "abc"})
    payload = {"trainer": "X", "dataset": "D", "seed": 1, "accuracy": 12.5, "metrics": {"accuracy": 12.5},
               "subsets": {"OOP": {"accuracy": 12.5}}, "oop": 12.5, "shots": 4}
    loaded = {"model_dir": "/m", "epoch": 3, "names_loaded": "3/5"}
    path = results.write_results(str(tmp_path / "run"), payload, fp, loaded=loaded)
    res = results.read_results(path)
    assert (res.schema, res.kind, res.legacy) == (results.SCHEMA, "run", False)
    assert res.fingerprint == fp and res.data["loaded"] == loaded
    assert {k: res.data[k] for k in payload} == payload
    assert results.read_results(str(tmp_path / "run")).path == path  # a run directory works as well
    # the exclusion list at work: OUTPUT_DIR is not identity
    assert "OUTPUT_DIR" not in fp["config"] and fp["config"]["OPTIM.LR"] == 0.1


@pytest.mark.parametrize("edit", ["accuracy", "drop-metrics", "seed"])
def test_a_results_file_edited_after_the_run_is_not_trusted(tmp_path: Path, caplog, edit: str) -> None:
    """An ``accuracy`` edited to 99 (``error_rate`` still 60) was tabulated as 99, and a skip check took the
    file as the finished run. The digest written with the file (SHA-256 of the rest, computed here
    independently) no longer matches: every reader refuses it, naming the file."""
    import hashlib

    fp = fp_of({"TRAINER": {"NAME": "X"}}, data={"OOP": "abc"})
    payload = {"trainer": "X", "dataset": "D", "seed": 1, "accuracy": 40.0, "error_rate": 60.0,
               "metrics": {"accuracy": 40.0}, "oop": 40.0, "shots": 4}
    path = Path(results.write_results(str(tmp_path / "run"), payload, fp))
    data = json.loads(path.read_text())
    rest = {k: v for k, v in data.items() if k != "digest"}
    canonical = json.dumps(rest, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert data["digest"] == hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    assert results.find_finished(str(tmp_path / "run"), fp).state == "match"
    if edit == "accuracy":
        data["accuracy"] = data["oop"] = 99.0
    elif edit == "drop-metrics":
        del data["metrics"]
    else:
        data["seed"] = 2
    path.write_text(json.dumps(data, indent=2))
    with pytest.raises(results.ResultsError, match="no longer matches the digest written with it"):
        results.read_results(str(path))
    state = results.find_finished(str(tmp_path / "run"), fp)
    assert state.state == "unreadable" and str(path) in state.differences[0]
    with caplog.at_level(logging.WARNING):
        assert list(results.iter_results(str(tmp_path))) == []
    assert "no longer matches the digest" in caplog.text
    # the same content rewritten in another layout (indentation, key order) is the same file
    original = dict(json.loads(json.dumps(rest)), digest=hashlib.sha256(canonical.encode("utf-8")).hexdigest())
    path.write_text(json.dumps(dict(reversed(list(original.items()))), indent=4))
    assert results.read_results(str(path)).data["accuracy"] == 40.0


def test_reader_schema_0_newer_and_broken_files(tmp_path: Path) -> None:
    (tmp_path / "old").mkdir()
    (tmp_path / "old/results.json").write_text(json.dumps({"trainer": "X", "accuracy": 1.0}))
    old = results.read_results(str(tmp_path / "old"))
    assert old.schema == 0 and old.fingerprint is None and old.legacy
    (tmp_path / "new").mkdir()
    (tmp_path / "new/results.json").write_text(json.dumps({"schema": results.SCHEMA + 1}))
    with pytest.raises(results.ResultsError, match="newer than this code"):
        results.read_results(str(tmp_path / "new"))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad/results.json").write_text("{not json")
    with pytest.raises(results.ResultsError, match=r"bad/results.json: not valid JSON"):
        results.read_results(str(tmp_path / "bad"))
    # a byte no UTF-8 text has was a UnicodeDecodeError traceback in the sweep's and launcher's skip check
    (tmp_path / "bad/results.json").write_bytes(b'{"trainer": "X\xff"}')
    with pytest.raises(results.ResultsError, match=r"bad/results.json: not UTF-8 \(byte 0xff at offset 14\)"):
        results.read_results(str(tmp_path / "bad"))
    assert results.find_finished(str(tmp_path / "bad"), {"id": "x"}).state == "unreadable"
    with pytest.raises(ValueError, match="fingerprint"):
        results.write_results(str(tmp_path / "x"), {"trainer": "X", "dataset": "D", "seed": 1, "accuracy": 1}, {})


def test_sample_std_is_numpy_ddof1() -> None:
    vals = [61.0, 64.5, 70.25]
    assert results.sample_std(vals) == pytest.approx(float(np.std(vals, ddof=1)))
    assert math.isnan(results.sample_std([3.0]))
    assert results.mean_std([1.0, None, 3.0]) == (2.0, pytest.approx(math.sqrt(2)), 2)


# ------------------------------------------------------------------------------ fingerprint


@pytest.fixture()
def toy(tmp_path: Path) -> Path:
    root = tmp_path / "toy"
    make_toy(str(root), domains=["Animals92_42"], image_size=8, num_train=2, num_val=1, num_test=1)
    return root


def cfg_for(root: Path, *opts: str, out: str = "o1", config: str = FSNL_SMOKE):
    return configs.build_cfg(trainer="FSNL_openclip", dataset=str(dataset_config()), config=config,
                             opts=["DATASET.NUM_SHOTS", "2", *opts], root=str(root), output_dir=out, seed=1)


def test_fingerprint_ignores_irrelevant_keys_and_follows_semantic_ones(toy: Path, tmp_path: Path) -> None:
    base = expected_fingerprint(cfg_for(toy))
    same = expected_fingerprint(cfg_for(toy, "TRAIN.PRINT_FREQ", "1", "DATALOADER.NUM_WORKERS", "2", out="elsewhere"))
    assert same["id"] == base["id"] and same["group"] == base["group"]
    lr = expected_fingerprint(cfg_for(toy, "OPTIM.LR", "0.123"))
    assert lr["id"] != base["id"] and results.diff_fingerprints(base, lr) == ["OPTIM.LR 0.05 -> 0.123"]
    seed2 = expected_fingerprint(configs.build_cfg(
        trainer="FSNL_openclip", dataset=str(dataset_config()), config=FSNL_SMOKE,
        opts=["DATASET.NUM_SHOTS", "2"], root=str(toy), output_dir="o1", seed=2))
    assert seed2["id"] != base["id"] and seed2["group"] == base["group"]  # grouping ignores the seed

    # a weights file rewritten in place at the same path is another run
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"first version")
    w1 = expected_fingerprint(cfg_for(toy, "MODEL.BACKBONE.WEIGHTS", str(weights)))
    weights.write_bytes(b"second version!")
    w2 = expected_fingerprint(cfg_for(toy, "MODEL.BACKBONE.WEIGHTS", str(weights)))
    assert w1["id"] != w2["id"] and results.diff_fingerprints(w1, w2) == ["weights (backbone weights identity)"]

    # so is a split file rewritten in place
    split = next(toy.glob("Animals*_OOP/split_Xin_*.json"))
    data = json.loads(split.read_text())
    data["test"] = dict(list(data["test"].items())[:-1])
    split.write_text(json.dumps(data))
    changed = expected_fingerprint(cfg_for(toy))
    assert results.diff_fingerprints(base, changed) == ["data.OOP (split file content)"]
    # a probe's data are its feature files: re-extracted features are not a changed split file
    probe_a = results.fingerprint({"method": "linear_probe"}, trainer="linear_probe", data={"test": "a"})
    probe_b = results.fingerprint({"method": "linear_probe"}, trainer="linear_probe", data={"test": "b"})
    assert results.diff_fingerprints(probe_a, probe_b) == ["data.test (feature file content)"]


def sweep_argv(root: Path, out: Path, *opts: str, flags: tuple = (), config: str = FSNL_SMOKE) -> list:
    """A sweep command line; ``flags`` go before ``--opts``, which swallows the rest."""
    return ["--method", "fsnl", "--root", str(root), "--out", str(out), "--domains", "Animals", "--shots", "2",
            "--seeds", "1", "--config", config, *flags, "--opts", "OPTIM.MAX_EPOCH", "1", *opts]


def jobs_of(argv: list) -> list:
    args = sweep._parser().parse_args(argv)
    return sweep.build_jobs(sweep.SweepSpec(method=args.method, root=args.root, out=args.out, domains=args.domains,
                                            shots=args.shots, seeds=args.seeds, config=args.config, opts=args.opts))


def run_job(job) -> None:
    train.main(train.parse_args(list(job.argv[2:])))


def test_sweep_reuses_only_the_same_fingerprint(toy: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    (job,) = jobs_of(sweep_argv(toy, out))
    run_job(job)
    res = results.read_results(job.done)
    # the run recorded exactly what the sweep computes from the command, and config.yaml says it too
    assert res.fingerprint["id"] == command_fingerprint(job.argv)["id"]
    assert results.read_header_fingerprint(str(Path(job.done).parent / "config.yaml")) == res.fingerprint["id"]
    assert res.fingerprint["fewshot"] and res.data["loaded"] is None and res.data["device"] == "cpu"

    # same job (and an excluded key changed): skipped
    assert sweep.main(sweep_argv(toy, out, flags=("--dry-run",))) == 0
    assert capsys.readouterr().err.strip().endswith("0 pending, 1 skipped (finished, same fingerprint)")
    assert sweep.main(sweep_argv(toy, out, "TRAIN.PRINT_FREQ", "1", flags=("--dry-run",))) == 0
    assert "0 pending, 1 skipped" in capsys.readouterr().err

    # other --opts: another directory (the readable hyper-parameter folder), so nothing is reused
    (other,) = jobs_of(sweep_argv(toy, out, "TRAINER.FSNL.LOSS", "caption"))
    assert other.done != job.done and "/config_cpu_smoke_TRAINER.FSNL.LOSS_caption/" in other.done
    assert sweep.main(sweep_argv(toy, out, "TRAINER.FSNL.LOSS", "caption", flags=("--dry-run",))) == 0
    assert "1 pending, 0 skipped" in capsys.readouterr().err

    # another --config lands in another directory as well
    mini = str(trainer_config("FSNL_openclip", "mini_cpu"))
    (cfg_job,) = jobs_of(sweep_argv(toy, out, config=mini))
    assert cfg_job.done != job.done and "/config_mini_cpu/seed1" in cfg_job.done

    # same directory, different fingerprint (the split file was rewritten): one error line, nothing run
    split = next(toy.glob("Animals*_OOP/split_Xin_*.json"))
    before = Path(job.done).read_text()
    split.write_text(split.read_text().replace('"test"', '"test"', 1) + " ")
    assert sweep.main(sweep_argv(toy, out)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: 1 job(s) would overwrite a different finished run")
    assert "data.OOP (split file content)" in err and "--force" in err
    assert Path(job.done).read_text() == before  # nothing lost
    # the launcher refuses the same way
    cmds = tmp_path / "cmds.txt"
    cmds.write_text(job.command + "\n")
    assert launch.main([str(cmds), "--log-dir", str(tmp_path / "logs")]) == 2
    assert "data.OOP" in capsys.readouterr().err
    # --force overwrites
    assert sweep.main(sweep_argv(toy, out, flags=("--dry-run", "--force"))) == 0
    assert capsys.readouterr().out.strip() == job.command


# ------------------------------------------------------------------------------ aggregation


def put(root: Path, rel: str, loss: str, seed: int, oop: float, ip: float) -> str:
    config = {"TRAINER": {"NAME": "FSNL_openclip", "FSNL": {"LOSS": loss}}, "SEED": seed,
              "DATASET": {"NAME": "Animals92_42", "NUM_SHOTS": 4, "SUB_CLASSES": "OOP"}}
    fp = fp_of(config, data={"OOP": "d1", "IP": "d2"})
    return results.write_results(str(root / rel), {
        "trainer": "FSNL_openclip", "dataset": "Animals92_42", "sub_classes": "OOP", "shots": 4, "seed": seed,
        "accuracy": oop, "oop": oop, "ip": ip}, fp)


def test_parse_two_configurations_two_labelled_rows_and_duplicates(tmp_path: Path, caplog) -> None:
    root = tmp_path / "out"
    base = "Animals92_42/shots_4/train/FSNL_openclip_USE_CAPTION_True/MEPOCH_200_BS_368_LR_0.000575"
    full = [(50.0, 40.0), (54.0, 42.0), (58.0, 41.0)]
    caption = [(30.0, 40.0), (31.0, 40.0)]
    for seed, (o, i) in enumerate(full, 1):
        put(root, f"{base}/seed{seed}", "full", seed, o, i)
    for seed, (o, i) in enumerate(caption, 1):
        put(root, f"{base}/TRAINER.FSNL.LOSS_caption/seed{seed}", "caption", seed, o, i)
    dup = put(root, f"{base}/zz_copy/seed1", "full", 1, 99.0, 99.0)  # same seed and configuration again
    with caplog.at_level(logging.WARNING, logger="scripts.parse_test_res"):
        groups = ptr.collect(str(root))
    rows = {g.label: g for g in groups}
    assert set(rows) == {"FSNL [TRAINER.FSNL.LOSS='full']", "FSNL [TRAINER.FSNL.LOSS='caption']"}
    f, c = rows["FSNL [TRAINER.FSNL.LOSS='full']"], rows["FSNL [TRAINER.FSNL.LOSS='caption']"]
    assert f.seeds == [1, 2, 3] and c.seeds == [1, 2]
    assert f.oop.mean == pytest.approx(54.0) and f.oop.std == pytest.approx(statistics.stdev([50, 54, 58]))
    assert c.oop.mean == pytest.approx(30.5)
    warning = next(r.getMessage() for r in caplog.records if "Duplicate" in r.getMessage())
    first = str((root / base / "seed1" / "results.json").resolve())
    assert str(Path(dup).resolve()) in warning and first in warning


def test_linear_probe_and_parse_report_the_same_sample_std(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    feats = {}
    for split, n in (("train", 6), ("val", 4), ("test", 8)):
        y = np.repeat(np.arange(3), n)
        x = rng.normal(size=(len(y), 5)).astype(np.float32) + y[:, None]
        feats[split] = lp.FeatureSplit(x, y, np.arange(len(y)), ["a", "b", "c"])
    res = lp.linear_probe(feats, [2], num_run=3, num_step=1)["2"]
    accs = res["accuracies"]
    assert res["accuracy_std"] == pytest.approx(float(np.std(accs, ddof=1)))
    fp = fp_of({"method": "linear_probe"}, trainer="linear_probe")
    results.write_results(str(tmp_path / "Animals92_42" / "linear_probe"),
                          {"dataset": "Animals92_42", "sub_classes": "OOP", "shots": {"2": res}}, fp,
                          kind="linear_probe")
    (group,) = ptr.collect(str(tmp_path))
    assert group.oop.std == pytest.approx(res["accuracy_std"]) and group.oop.n == 3


def write_log(path: Path, acc: float, finished: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["epoch [1/1]"] + (["Finish training"] if finished else []) + [f"* accuracy: {acc:.2f}%"]
    path.write_text("\n".join(lines) + "\n")


def test_coop_flags(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "output"
    for seed, acc in enumerate((60.0, 62.0, 67.0), 1):
        write_log(root / "exp_a" / f"seed{seed}" / "log.txt", acc)
    write_log(root / "exp_b" / "seed1" / "log.txt", 40.0)
    write_log(root / "exp_b" / "seed2" / "log.txt", 90.0, finished=False)  # an unfinished training
    assert ptr.main([str(root), "--multi-exp"]) == 0
    out = capsys.readouterr().out
    sd = statistics.stdev([60.0, 62.0, 67.0])
    assert f"Summary of directory: {root / 'exp_a'}\n* accuracy: 63.00% +- {sd:.2f}% (3 seed(s))" in out
    assert f"Summary of directory: {root / 'exp_b'}\n* accuracy: 40.00% +- - (1 seed(s))" in out
    assert "sample std over seeds (ddof 1)" in out
    assert ptr.main([str(root / "exp_a"), "--ci95"]) == 0  # one experiment: DIR holds seed*/
    half = 4.302652729911275 * sd / math.sqrt(3)
    assert f"* accuracy: 63.00% +- {half:.2f}%" in capsys.readouterr().out
    assert ptr.main([str(root / "exp_b"), "--test-log"]) == 0  # evaluation-only logs: no "Finish training"
    assert "* accuracy: 65.00%" in capsys.readouterr().out


def test_coop_view_never_averages_two_configurations(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                     caplog) -> None:
    """CoOp's ``DIR`` / ``--multi-exp`` view: a seed of another configuration run into the same
    experiment folder (another --opts) used to be averaged in silently."""
    root = tmp_path / "output"
    put(root, "exp/seed1", "full", 1, 20.0, 40.0)
    put(root, "exp/seed2", "full", 2, 30.0, 40.0)
    put(root, "exp/seed3", "caption", 3, 90.0, 40.0)
    with caplog.at_level(logging.WARNING, logger="scripts.parse_test_res"):
        assert ptr.main([str(root), "--multi-exp"]) == 0
    out = capsys.readouterr().out
    sd = statistics.stdev([20.0, 30.0])
    assert f"Summary of directory: {root / 'exp'} [TRAINER.FSNL.LOSS='full']\n* accuracy: 25.00% +- {sd:.2f}%" in out
    assert f"Summary of directory: {root / 'exp'} [TRAINER.FSNL.LOSS='caption']\n* accuracy: 90.00% +- -" in out
    assert "46.67" not in out  # the silent average of all three seeds
    assert any(str(root / "exp") in r.getMessage() and "2 different configurations" in r.getMessage()
               for r in caplog.records)
    assert ptr.main([str(root / "exp")]) == 0  # DIR itself holding seed*/: the same split
    assert out == capsys.readouterr().out


def test_zeroshot_other_opts_same_directory_is_one_error_line(toy: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "zs"
    argv = ["--method", "zeroshot", "--root", str(toy), "--out", str(out), "--domains", "Animals", "--seeds", "1",
            "--dry-run"]
    (job,) = sweep.build_jobs(sweep.SweepSpec(method="zeroshot", root=str(toy), out=str(out), domains=["Animals"],
                                              seeds=[1]))
    results.write_results(str(Path(job.done).parent), {"trainer": "ZeroshotCLIP_openclip", "dataset": "Animals92_42",
                                                       "seed": 1, "accuracy": 5.0}, command_fingerprint(job.argv))
    assert sweep.main(argv) == 0 and "0 pending, 1 skipped" in capsys.readouterr().err
    # The zero-shot folder does not name opts: the same directory, so the sweep refuses to reuse it.
    assert sweep.main(argv + ["--opts", "INPUT.INTERPOLATION", "bilinear"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "INPUT.INTERPOLATION 'bicubic' -> 'bilinear'" in err
    assert sweep.main(argv + ["--force", "--opts", "INPUT.INTERPOLATION", "bilinear"]) == 0
    assert "1 pending, 0 skipped" in capsys.readouterr().err


def test_a_relative_weights_path_is_recorded_as_written_and_hashed_where_the_job_runs(
        toy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """Hostile: ``--opts MODEL.BACKBONE.WEIGHTS <relative path>``. The skip check made the path absolute
    to hash the file from its own directory and so expected another config than the one train.py
    records: the sweep called its own finished run a failure and then refused every rerun. The path
    now stays as written in the config; the file is hashed in the job's directory."""
    work, other = tmp_path / "work", tmp_path / "other"
    for folder, seed in ((work, 7), (other, 8)):
        folder.mkdir()
        (folder / "configs").symlink_to(REPO / "configs")  # the sweep's commands name configs/...
        save_tiny_weights(folder / "tiny.pt", seed=seed)
    argv = sweep_argv(toy, tmp_path / "out", "MODEL.BACKBONE.WEIGHTS", "tiny.pt")
    (job,) = jobs_of(argv)
    monkeypatch.chdir(work)
    run_job(job)
    res = results.read_results(job.done)
    assert res.fingerprint["config"]["MODEL.BACKBONE.WEIGHTS"] == "tiny.pt"
    assert command_fingerprint(job.argv, str(work))["id"] == res.fingerprint["id"]
    # the same words in another directory name another file: another run, for the right reason
    assert results.diff_fingerprints(res.fingerprint, command_fingerprint(job.argv, str(other))) == [
        "weights (backbone weights identity)"]
    # the sweep's own check (the job's directory is the repo root there): skipped, not refused
    monkeypatch.setattr(sweep, "REPO_ROOT", work)
    assert sweep.main(sweep_argv(toy, tmp_path / "out", "MODEL.BACKBONE.WEIGHTS", "tiny.pt", flags=("--dry-run",))) == 0
    assert capsys.readouterr().err.strip().endswith("0 pending, 1 skipped (finished, same fingerprint)")


def test_evaluations_are_grouped_by_the_model_they_scored(toy: Path, tmp_path: Path, caplog) -> None:
    """Hostile: models trained at two learning rates, each scored on IP by the same eval command (which,
    like CoOp's eval.sh, does not repeat the training overrides). Both evaluations had one config, so
    parse_test_res called them one configuration: one was dropped as a duplicate seed (with two seeds,
    they were averaged together), under a label of the eval command's default LR. Now an evaluation
    takes its training keys from the run that trained the model (``source_run``, recorded and not
    hashed): two rows labelled by the real learning rates, and seeds of one model config together."""
    coop = str(trainer_config("CoOp_openclip"))

    def argv(out: Path, seed: int, *extra: str) -> list:
        return ["--root", str(toy), "--seed", str(seed), "--trainer", "CoOp_openclip", "--dataset-config-file",
                str(dataset_config()), "--config-file", coop, "--output-dir", str(out), *extra]

    evals = tmp_path / "evals"
    for lr, seed in (("0.05", 1), ("0.5", 1), ("0.5", 2)):
        run = tmp_path / f"lr{lr}" / f"seed{seed}"
        train.main(train.parse_args(argv(run, seed, "DATASET.NUM_SHOTS", "2", "OPTIM.MAX_EPOCH", "1", "OPTIM.LR", lr,
                                         "TEST.CROSS_EVAL", "()")))
        eval_argv = argv(evals / f"from_lr{lr}" / f"seed{seed}", seed, "--eval-only", "--model-dir", str(run),
                         "DATASET.NUM_SHOTS", "2", "DATASET.SUB_CLASSES", "IP")
        train.main(train.parse_args(eval_argv))
        evaluated = results.read_results(str(evals / f"from_lr{lr}" / f"seed{seed}")).fingerprint
        trained = results.read_results(str(run)).fingerprint
        assert evaluated["source_run"] == {"id": trained["id"], "group": trained["group"], "config": trained["config"]}
        assert evaluated["id"] == command_fingerprint(["python", "train.py", *eval_argv])["id"]  # not hashed
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        groups = ptr.collect(str(evals))
    assert "Duplicate result" not in caplog.text
    rows = {g.method: (g.seeds, g.ip.mean) for g in groups}
    assert set(rows) == {"CoOp_openclip [OPTIM.LR=0.05]", "CoOp_openclip [OPTIM.LR=0.5]"}
    assert rows["CoOp_openclip [OPTIM.LR=0.5]"][0] == [1, 2] and rows["CoOp_openclip [OPTIM.LR=0.05]"][0] == [1]
    # with the training runs (OOP only here): each evaluation's IP joins its own model's OOP, giving H
    everything = {g.method: g for g in ptr.collect(str(tmp_path))}
    assert set(everything) == set(rows)
    for group in everything.values():
        assert not math.isnan(group.oop.mean) and not math.isnan(group.ip.mean) and not math.isnan(group.hmean.mean)


def test_evaluation_config_takes_only_training_keys_from_the_trained_run() -> None:
    fp = {"config": {"OPTIM.LR": 0.002, "INPUT.SIZE": [32, 32], "DATASET.SUB_CLASSES": "IP", "TRAIN.PRINT_FREQ": 5},
          "source": {"run": "abc", "load_epoch": 3},
          "source_run": {"id": "abc", "group": "def", "config": {"OPTIM.LR": 0.5, "INPUT.SIZE": [64, 64],
                                                                 "DATALOADER.TRAIN_X.BATCH_SIZE": 8}}}
    assert results.evaluation_config(fp) == {"OPTIM.LR": 0.5, "INPUT.SIZE": [32, 32], "DATASET.SUB_CLASSES": "IP",
                                             "DATALOADER.TRAIN_X.BATCH_SIZE": 8, "source.load_epoch": 3}
    assert results.evaluation_config({**fp, "source_run": None}) == fp["config"]  # older files: as recorded


def test_evaluation_fingerprint_follows_the_model_dir(toy: Path, tmp_path: Path) -> None:
    """An eval-only run is identified by what it loads: the sweep's expectation equals what the run
    records, and retraining the model dir (or pointing at another) makes it another run."""
    run = tmp_path / "run"
    argv = ["python", "train.py", "--root", str(toy), "--seed", "1", "--trainer", "FSNL_openclip",
            "--dataset-config-file", str(dataset_config()), "--config-file", FSNL_SMOKE, "--output-dir", str(run),
            "DATASET.NUM_SHOTS", "2", "OPTIM.MAX_EPOCH", "1", "TEST.FINAL_MODEL", "best_val"]
    train.main(train.parse_args(argv[2:]))
    trained = results.read_results(str(run))
    assert trained.fingerprint["source"] is None and trained.fingerprint["id"] == command_fingerprint(argv)["id"]
    ev = tmp_path / "eval"
    eval_argv = argv[:argv.index("--output-dir")] + ["--output-dir", str(ev), "--eval-only", "--model-dir", str(run),
                                                       "DATASET.NUM_SHOTS", "2"]
    train.main(train.parse_args(eval_argv[2:]))
    evaluated = results.read_results(str(ev))
    assert evaluated.fingerprint["source"]["run"] == trained.fingerprint["id"]
    assert evaluated.fingerprint["id"] == command_fingerprint(eval_argv)["id"]
    other = eval_argv[:-4] + ["--model-dir", str(tmp_path / "elsewhere"), "DATASET.NUM_SHOTS", "2"]
    assert "source (the evaluated --model-dir / --load-epoch)" in results.diff_fingerprints(
        evaluated.fingerprint, command_fingerprint(other))
