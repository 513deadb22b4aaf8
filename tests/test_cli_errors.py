"""The real project packages behind train.py: user mistakes are one line, not a traceback."""
from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys

import pytest

from tests.helpers import REPO


def test_cli_data_and_backbone_mistakes_are_one_line(tmp_path, capsys):
    """A missing dataset folder or an unknown weights tag: one `error:` line, exit code 2."""
    import train

    base = ["--trainer", "FSNL_openclip", "--dataset-config-file", "configs/datasets/Animals92_42.yaml",
            "--config-file", "configs/trainers/FSNL_openclip/cpu_smoke.yaml", "--output-dir", str(tmp_path / "o")]
    assert train.cli(["--root", str(tmp_path / "missing"), *base]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: DATASET.ROOT")
    from datasets.make_toy import make_toy

    make_toy(tmp_path / "toy", domains=("Animals92_42",))
    assert train.cli(["--root", str(tmp_path / "toy"), *base, "MODEL.BACKBONE.WEIGHTS", "laion400m_e33"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Unknown MODEL.BACKBONE.WEIGHTS 'laion400m_e33'" in err[0]


ARGPARSE_CASES = [
    ("scripts.grid", ["--root", "r"], "the following arguments are required: --out", "scripts.grid --help"),
    ("scripts.sweep", ["--method", "nope", "--root", "r", "--out", "o"], "argument --method: invalid choice",
     "scripts.sweep --help"),
    ("tools.mini_beyond.__main__", ["build", "--train", "x"], "argument --train: invalid int value: 'x'",
     "tools.mini_beyond build --help"),
    ("lpclip.linear_probe", ["--dataset", "X", "--num-run", "0"], "--num-run 0: must be in 1..1000",
     "lpclip/linear_probe.py --help"),
    ("scripts.launch", [], "the following arguments are required: source", "scripts.launch --help"),
    # parsers without a prog are named by their module (argparse said "check.py", "linear_probe.py")
    ("datasets.check", [], "the following arguments are required: --root", "python -m datasets.check --help"),
    ("benchmarks.linear_probe", ["--bogus"], "unrecognized arguments: --bogus",
     "python -m benchmarks.linear_probe --help"),
    # a sub-command's unknown option names the sub-command's help (argparse reported it at the top level)
    ("tools.mini_beyond.__main__", ["demo", "--out", "o", "--bogus", "1"], "unrecognized arguments: --bogus 1",
     "python -m tools.mini_beyond demo --help"),
]


@pytest.mark.parametrize("module,argv,message,hint", ARGPARSE_CASES, ids=[f"{c[0]}-{c[1][0] if c[1] else ''}" for c in ARGPARSE_CASES])
def test_command_line_mistakes_are_one_error_line(module, argv, message, hint, capsys):
    """argparse printed a usage block and `prog: error: ...`; every entry point (one parser class,
    dassl.cli.ArgumentParser) now says it as the project's one line, `error: ...; see <prog> --help`,
    exit 2, as for any other mistake."""
    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(module).main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1, err
    assert err[0].startswith("error: ") and message in err[0] and err[0].endswith(hint), err[0]


def test_command_line_mistake_in_a_real_process():
    proc = subprocess.run([sys.executable, "train.py", "--bogus"], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2 and proc.stderr == "error: unrecognized arguments: --bogus; see python train.py --help\n"


MODEL_DIR_CASES = [
    (["--model-dir", "runs/a"], "--model-dir names the model that --eval-only evaluates"),
    (["--load-epoch", "5"], "--load-epoch names the model that --eval-only evaluates"),
    (["--model-dir", "runs/a", "--load-epoch", "5"], "--model-dir and --load-epoch name the model"),
    (["--eval-only", "--load-epoch", "5"], "--load-epoch picks a checkpoint of --model-dir"),
    (["--eval-only", "--model-dir", "runs/a", "--load-epoch", "-1"], "--load-epoch -1: checkpoints are numbered from epoch 1"),
    (["--eval-only", "--model-dir", "runs/a", "--load-epoch", "0"], "--load-epoch 0: checkpoints are numbered from epoch 1"),
]


@pytest.mark.parametrize("extra,message", MODEL_DIR_CASES,
                         ids=["model-dir", "load-epoch", "both", "eval-no-dir", "epoch-minus-1", "epoch-0"])
def test_model_dir_and_load_epoch_without_eval_only_are_refused(extra, message, tmp_path, capsys):
    """Hostile: ``train.py --model-dir DIR`` without ``--eval-only`` (a user who means "start from this
    model") was ignored as in the reference, so a fresh run trained from scratch and was filed as if
    it had started from DIR; ``--load-epoch`` alone was ignored the same way. Now one line, before any
    folder is made."""
    import train

    out = tmp_path / "o"
    argv = ["--root", str(tmp_path), "--trainer", "FSNL_openclip", "--output-dir", str(out), *extra]
    with pytest.raises(SystemExit) as exit_info:
        train.cli(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert err[0].endswith(" --help") and not out.exists()


#: Every program of the project (benchmarks/ are developer tools and left out).
ENTRY_POINTS = tuple(sorted(
    str(p.relative_to(REPO)) for d in ("", "scripts", "lpclip", "datasets", "tools", "tools/mini_beyond")
    for p in (REPO / d).glob("*.py") if '\nif __name__ == "__main__":' in p.read_text()))
#: Programs that handle a Ctrl-C while they run themselves (a summary, a resumable run's message).
HANDLE_CTRL_C = ("train.py", "scripts/grid.py", "scripts/launch.py")
_LOADING_PROGRAM = '''
if __name__ == "__main__":
    from dassl.ctrl_c import quiet_ctrl_c_while_loading

    quiet_ctrl_c_while_loading()

import os
import signal
import sys

import {heavy}


def main():
    try:
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(100):
            pass
    except KeyboardInterrupt:
        print("main handled it", file=sys.stderr)
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
'''


@pytest.mark.parametrize("during", ["imports", "main"])
@pytest.mark.parametrize("how", ["path", "module"])
def test_ctrl_c_while_a_program_loads_is_one_line(tmp_path, during, how):
    """A Ctrl-C during an entry point's imports (seconds of torch) was a KeyboardInterrupt traceback;
    once main runs, the program's own handling still gets its KeyboardInterrupt."""
    pkg = tmp_path / "prog"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    # a module whose import is interrupted, as torch's would be
    (pkg / "heavy.py").write_text("import os, signal, time\nos.kill(os.getpid(), signal.SIGINT)\ntime.sleep(0.5)\n"
                                  if during == "imports" else "")
    (pkg / "entry.py").write_text(_LOADING_PROGRAM.format(heavy="prog.heavy"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(tmp_path)])}
    cmd = [sys.executable, str(pkg / "entry.py")] if how == "path" else [sys.executable, "-m", "prog.entry"]
    res = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    if during == "imports":
        assert (res.returncode, res.stderr) == (130, "interrupted\n")
    else:
        assert (res.returncode, res.stderr) == (0, "main handled it\n")
    # started with Ctrl-C ignored (a background job of a script): it stays ignored, in the imports and in main
    res = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert (res.returncode, res.stderr) == (1, "")


@pytest.mark.parametrize("during", ["package", "main"])
def test_ctrl_c_while_a_package_of_a_dash_m_program_loads_is_one_line(tmp_path, during):
    """``python -m datasets.make_toy``: runpy imports the package (whose ``__init__`` loads torch) before the
    module's own guard runs, and a Ctrl-C there was a traceback through torch. The package's
    ``quiet_ctrl_c_while_package_loads`` makes it one line; ``main`` still gets its KeyboardInterrupt."""
    pkg = tmp_path / "prog"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "from dassl.ctrl_c import quiet_ctrl_c_while_package_loads\n\nquiet_ctrl_c_while_package_loads()\n\n"
        "import prog.heavy  # noqa\n")
    (pkg / "heavy.py").write_text("import os, signal, time\nos.kill(os.getpid(), signal.SIGINT)\ntime.sleep(0.5)\n"
                                  if during == "package" else "")
    (pkg / "entry.py").write_text(_LOADING_PROGRAM.format(heavy="os"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(tmp_path)])}
    res = subprocess.run([sys.executable, "-m", "prog.entry"], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=60)
    expected = (130, "interrupted\n") if during == "package" else (0, "main handled it\n")
    assert (res.returncode, res.stderr) == expected


def test_the_datasets_package_quiets_ctrl_c_first():
    lines = (REPO / "datasets" / "__init__.py").read_text().splitlines()
    call = lines.index("quiet_ctrl_c_while_package_loads()  # `python -m datasets.check`: this package loads torch "
                       "before check's guard")
    first = next(i for i, ln in enumerate(lines) if ln.startswith(("import ", "from ")) and "ctrl_c" not in ln
                 and "__future__" not in ln)
    assert call < first


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_entry_points_quiet_ctrl_c_before_their_imports(entry):
    """Each program installs the handler before any import of the project or a third-party package."""
    lines = (REPO / entry).read_text().splitlines()
    call = lines.index("    quiet_ctrl_c_while_loading()")
    start = lines.index("from __future__ import annotations")  # after the docstring
    first = next(i for i, ln in enumerate(lines) if i > start and ln.startswith(("import ", "from "))
                 and ln not in ("import sys", "from pathlib import Path"))
    assert call < first, entry


def test_the_entry_points_are_found():
    assert {"train.py", "scripts/cluster_eval.py", "datasets/check.py", "tools/cluster_names.py",
            "tools/mini_beyond/__main__.py", "lpclip/linear_probe.py"} <= set(ENTRY_POINTS), ENTRY_POINTS


@pytest.mark.parametrize("entry", [e for e in ENTRY_POINTS if e not in HANDLE_CTRL_C])
def test_entry_points_end_with_exit_with(entry):
    """A Ctrl-C once ``main`` runs was a KeyboardInterrupt traceback from inside a k-means fit or an image
    decode (``scripts.cluster_eval``, ``lpclip``, ``datasets.check`` ...): each program ends with
    ``exit_with(main)``, which makes it one line."""
    lines = (REPO / entry).read_text().rstrip().splitlines()
    assert lines[-2] == 'if __name__ == "__main__":' and lines[-1].startswith("    exit_with("), lines[-2:]


def test_a_ctrl_c_main_leaves_is_one_line(tmp_path):
    prog = tmp_path / "prog.py"
    prog.write_text("import os, signal, time\nfrom dassl.ctrl_c import exit_with\n\n\ndef main():\n"
                    "    os.kill(os.getpid(), signal.SIGINT)\n    time.sleep(5)\n    return 0\n\n\nexit_with(main)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, str(prog)], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=60)
    assert (res.returncode, res.stderr) == (130, "interrupted\n")
    prog.write_text("from dassl.ctrl_c import exit_with\n\nexit_with(lambda: 3)\n")
    res = subprocess.run([sys.executable, str(prog)], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=60)
    assert (res.returncode, res.stderr) == (3, "")


def test_the_ctrl_c_module_imports_nothing_slow():
    """Entry points import it before anything else: a Ctrl-C during dassl.cli's argparse and logging
    imports (it lived there) was still a traceback."""
    src = (REPO / "dassl" / "ctrl_c.py").read_text()
    imported = {ln.split()[1] for ln in src.splitlines() if ln.startswith(("import ", "from "))}
    assert imported <= {"__future__", "signal", "sys", "types", "typing"}, imported
