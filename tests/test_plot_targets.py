"""Output targets of the plot and analysis scripts (plot_curves, plot_zeroshot, plot_tsne,
backbone_scaling): a figure or JSON that would land on a run's files, a link, a directory or a user's
file is refused in one ``error:`` line with exit code 2 before any work, and nothing on disk changes;
a normal run writes its outputs and a rerun replaces them."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import matplotlib
import matplotlib.pyplot as plt
import pytest

from scripts import backbone_scaling as bbs
from scripts import cluster_eval, domains, plot_curves, plot_tsne, plot_zeroshot
from scripts.plot_curves import FIGURE_MARK, written_figure
from scripts.sweep import Job, SweepSummary
from tests.helpers import snapshot_tree, trainer_config

SMOKE = trainer_config("FSNL_openclip")
REPO = Path(__file__).resolve().parents[1]
#: What a figure of ``save_figure`` looks like to ``written_figure`` (the magic bytes and its mark).
FIGURE_LIKE = b"\x89PNG\r\n\x1a\n... Source " + FIGURE_MARK.encode()
SCRIPTS = ("plot_curves", "plot_zeroshot", "plot_tsne", "backbone_scaling")
#: The option that names each script's output.
OPTION = {"plot_curves": "--out", "plot_zeroshot": "--out", "plot_tsne": "--out", "backbone_scaling": "--figure"}
MAIN: Dict[str, Callable[[List[str]], int]] = {
    "plot_curves": plot_curves.main, "plot_zeroshot": plot_zeroshot.main, "plot_tsne": plot_tsne.main,
    "backbone_scaling": bbs.main,
}
BACKBONE = "test-tiny:none"


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))


def zeroshot_runs(root: Path) -> Path:
    """Two domains' zero-shot runs: enough for plot_curves (a star per domain) and plot_zeroshot."""
    runs = root / "runs"
    for ds, (oop, ip) in {"Animals92_42": (20.0, 55.0), "Food53_27": (15.0, 60.0)}.items():
        write_json(runs / ds / "ZeroshotCLIP_openclip" / "ZS_OOP" / "seed3" / "results.json",
                   {"trainer": "ZeroshotCLIP_openclip", "dataset": ds, "sub_classes": "OOP", "accuracy": oop,
                    "oop": oop, "ip": ip})
    return runs


def scaling_runs(toy_root: Path, out: Path) -> None:
    """Finished (pre-contract) results.json files where backbone_scaling's jobs put them."""
    jobs = bbs.build_jobs(str(toy_root), str(out), "Pokemon89_39", [bbs.parse_backbone(BACKBONE)], seeds=(1,))
    for job in jobs:
        oop = 10.0 if "--eval-only" in job.argv else 60.0
        write_json(Path(job.done), {"sub_classes": "OOP", "accuracy": oop, "oop": oop, "ip": 50.0})


def argv_for(script: str, tmp_path: Path, toy_root: Path, target: str) -> List[str]:
    """The smallest command of ``script`` writing to ``target`` (its inputs built under ``tmp_path``)."""
    if script in ("plot_curves", "plot_zeroshot"):
        return [str(zeroshot_runs(tmp_path)), "--out", target]
    if script == "plot_tsne":
        return ["--root", str(toy_root), "--domain", "Animals", "--config", str(SMOKE), "--max-per-class", "0",
                "--perplexity", "5", "--out", target]
    return ["--root", str(toy_root), "--out", str(tmp_path / "scaling"), "--domain", "Pokemon",
            "--backbones", BACKBONE, "--seeds", "1", "--figure", target]


def one_error_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture()
def no_heavy_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every step after the target check (reading results, loading a backbone, extracting features,
    planning or running jobs, plotting) fails the test if it is reached."""
    def forbid(name: str) -> Callable[..., None]:
        def called(*args: object, **kwargs: object) -> None:
            raise AssertionError(f"{name} ran before the output targets were refused")
        return called

    for module, names in ((plot_curves, ("load_groups", "plot_curves")),
                          (plot_zeroshot, ("load_groups", "plot_zeroshot")),
                          (plot_tsne, ("set_random_seed", "cfg_from_args", "load_backbone", "image_features")),
                          (bbs, ("build_jobs", "split_done", "run_jobs", "collect_points", "plot_scaling"))):
        for name in names:
            monkeypatch.setattr(module, name, forbid(f"{module.__name__}.{name}"))


def hostile_run_results(tmp: Path) -> Tuple[str, str]:
    """``--out`` naming a run's results.json: its .png / .pdf would go into the run folder."""
    write_json(tmp / "run" / "results.json", {"accuracy": 50.0})
    return str(tmp / "run" / "results.json"), "lies in the run folder"


def hostile_training_config(tmp: Path) -> Tuple[str, str]:
    """``--out`` naming the config.yaml of a run still training (a fingerprint header, no results.json)."""
    (tmp / "training").mkdir()
    (tmp / "training" / "config.yaml").write_text("# fingerprint: 0123abcd\nSEED: 1\n")
    return str(tmp / "training" / "config.yaml"), "lies in the run folder"


def hostile_symlink(tmp: Path) -> Tuple[str, str]:
    """``fig.png`` a link to a file that even looks like a figure: the link itself is refused."""
    (tmp / "precious.png").write_bytes(FIGURE_LIKE)
    (tmp / "fig.png").symlink_to(tmp / "precious.png")
    return str(tmp / "fig"), "is a symbolic link"


def hostile_directory(tmp: Path) -> Tuple[str, str]:
    (tmp / "fig.png").mkdir()
    (tmp / "fig.png" / "keep.txt").write_text("mine\n")
    return str(tmp / "fig"), "is a directory"


def hostile_inside_run(tmp: Path) -> Tuple[str, str]:
    """A figure in a (not yet existing) subfolder of a run folder."""
    write_json(tmp / "run" / "results.json", {"accuracy": 50.0})
    return str(tmp / "run" / "plots" / "fig"), "lies in the run folder"


def hostile_user_file(tmp: Path) -> Tuple[str, str]:
    """The .pdf (the second file checked) is a user's file: the .png, which passes, is not written either."""
    (tmp / "fig.pdf").write_bytes(b"my own notes\n")
    return str(tmp / "fig"), "exists and is not a figure this tool wrote"


def hostile_matplotlib_figure(tmp: Path) -> Tuple[str, str]:
    """A figure the user drew with Matplotlib (a paper figure named like ``--out``): it passed as an
    earlier figure of the plot scripts, Matplotlib's name being in it, and was replaced (exit 0)."""
    matplotlib.use("Agg")
    fig = plt.figure()
    plt.plot([1, 2])
    fig.savefig(tmp / "fig.png")
    plt.close(fig)
    return str(tmp / "fig"), "exists and is not a figure this tool wrote"


def cases(*makers: Callable[[Path], Tuple[str, str]], prefix: str) -> Dict[str, Callable[[Path], Tuple[str, str]]]:
    """Hostile-target makers by test id (their names without ``prefix``)."""
    return {m.__name__.removeprefix(prefix).replace("_", "-"): m for m in makers}


HOSTILE = cases(hostile_run_results, hostile_training_config, hostile_symlink, hostile_directory, hostile_inside_run,
                hostile_user_file, hostile_matplotlib_figure, prefix="hostile_")


@pytest.mark.parametrize("case", list(HOSTILE))
@pytest.mark.parametrize("script", SCRIPTS)
def test_a_hostile_target_is_refused_before_any_work(script: str, case: str, tmp_path: Path, toy_root: Path,
                                                     no_heavy_work: None, capsys: pytest.CaptureFixture) -> None:
    target, why = HOSTILE[case](tmp_path)
    argv = argv_for(script, tmp_path, toy_root, target)
    before = snapshot_tree(tmp_path)
    assert MAIN[script](argv) == 2
    err = one_error_line(capsys)
    assert why in err and OPTION[script] in err and target in err, err
    assert snapshot_tree(tmp_path) == before


@pytest.mark.parametrize("name, why", [
    ("results", "results.json is the name of a file a run writes"),
    ("scaling", "exists and is not a JSON of the plotted numbers"),
])
def test_scaling_json_target_is_checked_too(name: str, why: str, tmp_path: Path, toy_root: Path,
                                            no_heavy_work: None, capsys: pytest.CaptureFixture) -> None:
    """The plotted numbers' JSON: never a results.json (even in a fresh folder), never a user's JSON."""
    (tmp_path / "scaling.json").write_text('{"metric": "mine"}\n')
    target = str(tmp_path / "figs" / name) if name == "results" else str(tmp_path / name)
    before = snapshot_tree(tmp_path)
    assert bbs.main(argv_for("backbone_scaling", tmp_path, toy_root, target)) == 2
    err = one_error_line(capsys)
    assert why in err and f"--figure {target}" in err, err
    assert snapshot_tree(tmp_path) == before


def test_scaling_dry_run_refuses_as_the_run_would(tmp_path: Path, toy_root: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "fig.pdf").write_bytes(b"my own notes\n")
    before = snapshot_tree(tmp_path)
    assert bbs.main(argv_for("backbone_scaling", tmp_path, toy_root, str(tmp_path / "fig")) + ["--dry-run"]) == 2
    assert "exists and is not a figure" in one_error_line(capsys)
    assert snapshot_tree(tmp_path) == before


@pytest.mark.parametrize("where", ["in-a-planned-run", "on-the-out-folder"])
def test_scaling_figure_in_the_sweeps_own_runs_is_refused(where: str, tmp_path: Path, toy_root: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture) -> None:
    """Runs that do not exist yet: the zero-shot run's folder, or --out being the figure's JSON path."""
    monkeypatch.setattr(bbs, "run_jobs", lambda *a, **k: pytest.fail("a job ran"))
    monkeypatch.setattr(bbs, "split_done", lambda *a, **k: pytest.fail("the jobs were inspected"))
    out = tmp_path / ("runs.json" if where == "on-the-out-folder" else "runs")
    zs_run = out / "test-tiny__none" / "Pokemon89_39" / "FSNL_openclip" / "ZS_OOP" / "seed1"
    target = str(tmp_path / "runs") if where == "on-the-out-folder" else str(zs_run / "fig")
    argv = ["--root", str(toy_root), "--out", str(out), "--domain", "Pokemon", "--backbones", BACKBONE,
            "--seeds", "1", "--figure", target]
    assert bbs.main(argv) == 2
    err = one_error_line(capsys)
    why = "is a folder of this sweep's run" if where == "on-the-out-folder" else f"lies in the run folder {zs_run}"
    assert why in err and f"--figure {target}" in err, err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_run_writes_its_outputs_and_a_rerun_replaces_them(script: str, tmp_path: Path, toy_root: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    base = tmp_path / "figs" / "fig"
    argv = argv_for(script, tmp_path, toy_root, str(base))
    if script == "backbone_scaling":
        scaling_runs(toy_root, tmp_path / "scaling")
        argv.append("--plot-only")
        again = argv + ["--metric", "ip"]
    else:
        again = argv + ["--title", "another title"]
    assert MAIN[script](argv) == 0
    png, pdf = Path(f"{base}.png"), Path(f"{base}.pdf")
    assert written_figure(png) and written_figure(pdf)
    first = png.read_bytes()
    if script == "backbone_scaling":
        assert bbs.written_points(Path(f"{base}.json"))
        assert json.loads(Path(f"{base}.json").read_text())["points"][0]["fsnl"] == pytest.approx(60.0)
    assert MAIN[script](again) == 0
    assert png.read_bytes() != first and written_figure(png) and written_figure(pdf)
    if script == "backbone_scaling":
        assert json.loads(Path(f"{base}.json").read_text())["metric"] == "ip"
    assert sorted(p.name for p in base.parent.iterdir()) == sorted(
        ["fig.png", "fig.pdf"] + (["fig.json"] if script == "backbone_scaling" else []))
    capsys.readouterr()


def test_the_committed_figures_are_recognised_as_figures() -> None:
    """The README's analysis commands write onto docs/figures: a rerun must replace those files."""
    figures = sorted((REPO / "docs" / "figures").glob("*.png"))
    assert figures and all(written_figure(p) for p in figures)


@pytest.mark.parametrize("domains,message", [
    # the list named only the other requested domains, and a lone typo blamed the results themselves
    (["Food", "Landmak"], "no zero-shot results for --domains Landmak; the domains with zero-shot results: "
                          "Animals92_42 Food53_27"),
    (["Landmak"], "no zero-shot results for --domains Landmak; the domains with zero-shot results: "
                  "Animals92_42 Food53_27"),
])
def test_plot_zeroshot_domains_without_results_are_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                          domains: List[str], message: str) -> None:
    """Hostile: a typo in ``--domains`` beside a found domain drew the figure without it (exit 0); nothing
    to plot at all exited 1 where every other plot script's user mistake exits 2. Both are one line,
    exit 2, nothing written."""
    runs = zeroshot_runs(tmp_path)
    before = snapshot_tree(tmp_path)
    assert plot_zeroshot.main([str(runs), "--out", str(tmp_path / "zs"), "--domains", *domains]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {message}"], err
    assert snapshot_tree(tmp_path) == before


def test_scaling_reads_a_relative_out_where_its_jobs_wrote_it(tmp_path: Path, toy_root: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Hostile: ``--out scaling`` typed outside the repository root. The jobs run from the repository root
    and wrote ``<repo>/scaling``; the plot read ``./scaling``, found nothing and drew empty points."""
    scaling_runs(toy_root, tmp_path / "scaling")
    monkeypatch.setattr(domains, "REPO_ROOT", tmp_path)  # where the jobs ran
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    argv = argv_for("backbone_scaling", tmp_path, toy_root, str(tmp_path / "fig"))
    argv[argv.index("--out") + 1] = "scaling"
    assert bbs.main(argv + ["--plot-only"]) == 0
    points = json.loads((tmp_path / "fig.json").read_text())["points"]
    assert points[0]["fsnl"] == pytest.approx(60.0) and points[0]["zeroshot"] == pytest.approx(10.0)


# ------------------------------------------------------------------------------ cluster_eval
def cluster_argv(toy_root: Path, out: str, *extra: str) -> List[str]:
    return ["--root", str(toy_root), "--domains", "Animals", "--config", str(SMOKE), "--n-init", "2",
            "--out", out, *extra]


def cluster_in_run_folder(tmp: Path) -> Tuple[str, str]:
    write_json(tmp / "run" / "results.json", {"accuracy": 50.0})
    return str(tmp / "run" / "ce"), "lies in the run folder"


def cluster_users_markdown(tmp: Path) -> Tuple[str, str]:
    (tmp / "ce.md").write_text("# my notes\n")
    return str(tmp / "ce"), "exists and is not a clustering table this tool wrote"


def cluster_users_json(tmp: Path) -> Tuple[str, str]:
    write_json(tmp / "ce.json", {"rows": [], "mine": 1})
    return str(tmp / "ce"), "exists and is not a clustering table this tool wrote"


def cluster_json_directory(tmp: Path) -> Tuple[str, str]:
    (tmp / "ce.json").mkdir()
    return str(tmp / "ce"), "is a directory"


def cluster_json_symlink(tmp: Path) -> Tuple[str, str]:
    (tmp / "ce.json").symlink_to(tmp / "elsewhere.json")
    return str(tmp / "ce"), "is a symbolic link"


CLUSTER_HOSTILE = cases(cluster_in_run_folder, cluster_users_markdown, cluster_users_json, cluster_json_directory,
                        cluster_json_symlink, prefix="cluster_")
MAIN_ANALYSIS = {"cluster_eval": cluster_eval.main, "plot_tsne": plot_tsne.main}


@pytest.mark.parametrize("case", list(CLUSTER_HOSTILE))
def test_cluster_eval_refuses_a_hostile_target_before_any_work(case: str, tmp_path: Path, toy_root: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture) -> None:
    """Hostile: ``cluster_eval --out`` wrote ``<out>.json`` / ``<out>.md`` with plain ``open(..., "w")``
    after minutes of feature extraction, over whatever was there (a run folder's files, a user's notes,
    through a link). Now the targets are checked first, and written atomically."""
    monkeypatch.setattr(cluster_eval, "evaluate", lambda *a, **k: pytest.fail("features were computed"))
    out, why = CLUSTER_HOSTILE[case](tmp_path)
    before = snapshot_tree(tmp_path)
    assert cluster_eval.main(cluster_argv(toy_root, out)) == 2
    err = one_error_line(capsys)
    assert why in err and "--out" in err, err
    assert snapshot_tree(tmp_path) == before


def test_cluster_eval_replaces_only_its_own_configuration(tmp_path: Path, toy_root: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    """A second call with another seed, split or subset list replaced the first table without a word, and
    the ``.md`` said nothing of what computed it. Now the JSON records the configuration (``run``), the
    table names backbone, seed and splits, another configuration is refused unless ``--overwrite``, and
    the same one recomputes in place."""
    out = str(tmp_path / "ce")
    assert cluster_eval.main(cluster_argv(toy_root, out)) == 0
    first = json.loads((tmp_path / "ce.json").read_text())
    assert [r["splits"] for r in first["rows"]] == [["test"]] * 2
    run = first["run"]
    assert (run["seed"], run["n_init"], run["splits"], run["subsets"]) == (0, 2, ["test"], ["OOP", "IP"])
    split = next(toy_root.glob("Animals*_OOP")) / f"split_Xin_{next(toy_root.glob('Animals*_OOP')).name}.json"
    assert run["data"]["Animals92_42"]["OOP"] == hashlib.sha256(split.read_bytes()).hexdigest()
    assert run["backbone"] == "test-tiny" and run["weights"]["kind"] == "random"
    md = (tmp_path / "ce.md").read_text()
    assert md.startswith(cluster_eval.TABLE_NOTE) and "seed 0, k-means restarts 2, splits test" in md.splitlines()[1]
    before = snapshot_tree(tmp_path)
    capsys.readouterr()
    for extra, key in ((("--splits", "train"), "splits"), (("--seed", "5"), "seed"), (("--subsets", "OOP"), "subsets")):
        assert cluster_eval.main(cluster_argv(toy_root, out, *extra)) == 2
        err = one_error_line(capsys)
        assert "holds the clustering table of another configuration" in err and key in err and "--overwrite" in err, err
        assert snapshot_tree(tmp_path) == before
    assert cluster_eval.main(cluster_argv(toy_root, out)) == 0  # the same configuration: in place
    assert json.loads((tmp_path / "ce.json").read_text()) == first
    assert cluster_eval.main(cluster_argv(toy_root, out, "--splits", "train", "--overwrite")) == 0
    second = json.loads((tmp_path / "ce.json").read_text())
    assert [r["splits"] for r in second["rows"]] == [["train"]] * 2 and second["run"]["splits"] == ["train"]


def test_cluster_eval_refuses_an_older_table_without_its_configuration(tmp_path: Path, toy_root: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    write_json(tmp_path / "ce.json", {"rows": []})  # what this script wrote before it recorded ``run``
    assert cluster_eval.main(cluster_argv(toy_root, str(tmp_path / "ce"))) == 2
    assert "an older version, which recorded none" in one_error_line(capsys)


@pytest.mark.parametrize("script", ["cluster_eval", "plot_tsne"])
@pytest.mark.parametrize("mistake", ["no-data", "no-weights-file"])
def test_feature_scripts_say_data_and_weights_mistakes_in_one_line(script: str, mistake: str, tmp_path: Path,
                                                                    toy_root: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture) -> None:
    """Hostile: a ``--root`` without the domain, or ``--weights`` naming no file, ended ``cluster_eval`` and
    ``plot_tsne`` in a traceback (and a wrong root only after the backbone was loaded). Now one line,
    exit 2, and the data is checked before any model is loaded."""
    root = tmp_path / "nowhere" if mistake == "no-data" else toy_root
    if mistake == "no-data":
        for module in (cluster_eval, plot_tsne):
            monkeypatch.setattr(module, "load_backbone", lambda *a, **k: pytest.fail("the backbone was loaded"))
    out = str(tmp_path / "out")
    extra = ("--backbone", "test-tiny", "--weights", "missing.pt") if mistake == "no-weights-file" else ()
    if script == "cluster_eval":
        argv = ["--root", str(root), "--domains", "Animals", "--out", out, *extra]
    else:
        argv = ["--root", str(root), "--domain", "Animals", "--out", out, *extra]
    if not extra:
        argv += ["--config", str(SMOKE)]
    before = snapshot_tree(tmp_path)
    assert MAIN_ANALYSIS[script](argv) == 2
    err = one_error_line(capsys)
    expected = "Cannot count the OOP classes of Animals92_42" if mistake == "no-data" else "'missing.pt' not found"
    assert expected in err, err
    assert snapshot_tree(tmp_path) == before


@pytest.mark.parametrize("codes,status", [([2], 2), ([1, 2], 1)])
def test_scaling_figure_of_finished_runs_does_not_hide_failed_jobs(codes: List[int], status: int, tmp_path: Path,
                                                                   toy_root: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture) -> None:
    """Hostile: a job failed and the figure was drawn from the runs that finished; the script exited 0,
    so a pipeline took the incomplete figure for the full one. Now the figure is written and the exit
    status is the jobs' (2 when every failure was a user's mistake, else 1), as scripts.sweep's."""
    scaling_runs(toy_root, tmp_path / "scaling")
    job = Job(("python", "train.py"), str(tmp_path / "x" / "results.json"), "a job")
    failed = SweepSummary(failed=[(job, f"exit code {c}") for c in codes], exit_codes=list(codes))
    monkeypatch.setattr(bbs, "run_jobs", lambda *a, **k: failed)
    target = tmp_path / "fig"
    assert bbs.main(argv_for("backbone_scaling", tmp_path, toy_root, str(target))) == status
    assert written_figure(Path(f"{target}.png")) and bbs.written_points(Path(f"{target}.json"))
    assert "FAILED" in capsys.readouterr().err
