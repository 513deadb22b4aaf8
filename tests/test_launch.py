"""scripts.launch: local pool (failures, retries, GPU pinning, skip-if-done) and the SLURM array script."""
from __future__ import annotations

import io
import json
import os
import shlex
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scripts import launch

PY = shlex.quote(sys.executable)


def py(code: str) -> str:
    return f"{PY} -c {shlex.quote(code)}"


def writer(path: Path, extra: str = "") -> str:
    """A command that writes its CUDA_VISIBLE_DEVICES into ``path``."""
    return py(f"import os; open({str(path)!r}, 'w').write(os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')){extra}")


def test_local_three_jobs_one_failure(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    outs = [tmp_path / f"o{i}.txt" for i in range(3)]
    cmds = tmp_path / "cmds.txt"
    cmds.write_text("# a comment\n\n" + "\n".join([
        writer(outs[0]),
        writer(outs[1], "; raise SystemExit(7)"),
        writer(outs[2]),
    ]) + "\n")
    logs = tmp_path / "logs"
    rc = launch.main([str(cmds), "--workers", "2", "--gpus", "0,1", "--log-dir", str(logs), "--cwd", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 1
    assert "3 command(s): succeeded 2, skipped 0, failed 1" in err
    assert "FAILED job 1 (exit code 7" in err
    assert {p.read_text() for p in outs} <= {"0", "1"}  # every job pinned to one GPU of the list
    for i in range(3):
        log = (logs / f"job{i:04d}.log").read_text()
        assert "# attempt 1" in log
    assert sorted(p.name for p in logs.iterdir()) == ["job0000.log", "job0001.log", "job0002.log"]


def test_retries(tmp_path: Path) -> None:
    counter = tmp_path / "count"
    # Fails on its first attempt, succeeds on the second.
    flaky = py(
        f"import os, sys; p = {str(counter)!r}; n = int(open(p).read()) if os.path.exists(p) else 0; "
        "open(p, 'w').write(str(n + 1)); sys.exit(0 if n >= 1 else 1)"
    )
    commands = launch.parse_commands(flaky + "\n")
    summary = launch.run_local(commands, workers=1, gpus=[], retries=0, log_dir=str(tmp_path / "l0"), cwd=str(tmp_path))
    assert len(summary.failed) == 1 and summary.failed[0][1] == "exit code 1"

    counter.unlink()
    summary = launch.run_local(commands, workers=2, gpus=[], retries=1, log_dir=str(tmp_path / "l1"), cwd=str(tmp_path))
    assert len(summary.succeeded) == 1 and not summary.failed
    assert summary.attempts == {0: 2}
    assert counter.read_text() == "2"
    assert "# attempt 2" in (tmp_path / "l1/job0000.log").read_text()


def test_skip_when_output_dir_has_results(tmp_path: Path) -> None:
    done_dir, todo_dir = tmp_path / "runA", tmp_path / "runB"
    done_dir.mkdir()
    (done_dir / "results.json").write_text("{}")
    marker = tmp_path / "ran.txt"
    text = "\n".join(
        f"{py(f'open({str(marker)!r}, {chr(39)}a{chr(39)}).write({str(d.name)!r})')} --output-dir {d}"
        for d in (done_dir, todo_dir)
    )
    commands = launch.parse_commands(text)
    assert [c.done for c in commands] == [str(done_dir / "results.json"), str(todo_dir / "results.json")]
    summary = launch.run_local(commands, workers=2, gpus=[], log_dir=str(tmp_path / "logs"), cwd=str(tmp_path))
    assert marker.read_text() == "runB"  # runA was skipped
    assert [c.index for c in summary.skipped] == [0]
    assert [c.index for c in summary.succeeded] == [1]  # no results.json written: a warning, not a failure


def test_yaml_and_stdin(tmp_path: Path) -> None:
    done = tmp_path / "done.flag"
    yaml_text = (
        "commands:\n"
        f"  - {{cmd: {py('pass')!r}, done: {str(done)!r}}}\n"
        f"  - {py('raise SystemExit(0)')!r}\n"
    )
    commands = launch.read_commands("-", stdin=io.StringIO(yaml_text))
    assert [c.explicit_done for c in commands] == [True, False]
    summary = launch.run_local(commands, workers=1, gpus=[], log_dir=str(tmp_path / "logs"), cwd=str(tmp_path))
    # The first command exits 0 without creating its explicit done marker: that is a failure.
    assert [(c.index, why) for c, why, _ in summary.failed] == [(0, f"exit code 0 but {done} was not written")]
    with pytest.raises(ValueError, match="commands"):
        launch.parse_commands("commands: 3", yaml_hint=True)


def test_visible_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 3")
    assert launch.visible_gpus() == ["2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert launch.visible_gpus() == []
    assert launch.visible_gpus("5") == ["5"]


def test_done_marker() -> None:
    assert launch.done_marker("python train.py --output-dir 'a b/c' --seed 1") == os.path.join("a b/c", "results.json")
    assert launch.done_marker("python x.py --output-dir=out") == os.path.join("out", "results.json")
    assert launch.done_marker("echo hi") is None


def test_slurm_array_script(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "out1").mkdir()
    (work / "out1/results.json").write_text("{}")
    cmds = [f"{py(f'open({name!r}, {chr(39)}w{chr(39)}).write({name!r})')} --output-dir out{i}"
            for i, name in enumerate(("r0", "r1", "r2", "r3"))]
    src = tmp_path / "cmds.txt"
    src.write_text("\n".join(cmds) + "\n")

    # A fake sbatch on PATH records its arguments and answers like the real one.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "sbatch"
    fake.write_text(f'#!/usr/bin/env bash\necho "$PWD $*" > {tmp_path / "sbatch_args"}\necho "Submitted batch job 42"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")

    slurm_dir = work / "slurm"
    rc = launch.main([str(src), "--mode", "slurm", "--cwd", str(work), "--slurm-dir", str(slurm_dir),
                      "--partition", "gpu", "--gres", "gpu:a100:1", "--time", "02:00:00", "--cpus", "4",
                      "--mem", "16G", "--max-parallel", "2", "--setup", "export FOO=1"])
    out, err = capsys.readouterr()
    assert rc == 0 and out.strip() == "Submitted batch job 42"
    assert "3 array task(s) for 3 command(s) (1 already done)" in err
    script = slurm_dir / "job.sbatch"
    assert (tmp_path / "sbatch_args").read_text().split() == [str(work), str(script)]

    text = script.read_text()
    for line in ("#SBATCH --array=0,2-3%2", "#SBATCH --partition=gpu", "#SBATCH --gres=gpu:a100:1",
                 "#SBATCH --time=02:00:00", "#SBATCH --cpus-per-task=4", "#SBATCH --mem=16G",
                 "#SBATCH --output=slurm/logs/%x-%A_%a.out", "COMMANDS=slurm/commands.txt", "DONE=slurm/done.txt",
                 "export FOO=1"):
        assert line in text.splitlines()
    # every command keeps its line (a resubmission writes the same files); only the pending tasks are submitted
    assert (slurm_dir / "commands.txt").read_text().splitlines() == cmds
    assert (slurm_dir / "done.txt").read_text().splitlines() == [f"out{i}/results.json" for i in range(4)]

    # Run array task 2 as SLURM would: it executes line 3 (the "r2" command) from the submit dir.
    env = dict(os.environ, SLURM_ARRAY_TASK_ID="2", SLURM_SUBMIT_DIR=str(work))
    res = subprocess.run(["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert (work / "r2").read_text() == "r2" and not (work / "r0").exists()
    # Once its results exist the task is skipped instead of rerun.
    (work / "out2").mkdir()
    (work / "out2/results.json").write_text("{}")
    (work / "r2").unlink()
    res = subprocess.run(["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "skip" in res.stdout and not (work / "r2").exists()

    # The same list again (after more finished): the same commands file, fewer tasks. Another list into
    # the folder is refused, even with --force (a queued array of the first would run its lines); once
    # the user removed the old files, it is written.
    files = {n: (slurm_dir / n).read_bytes() for n in ("commands.txt", "done.txt")}
    rc = launch.main([str(src), "--mode", "slurm", "--cwd", str(work), "--slurm-dir", str(slurm_dir), "--no-submit"])
    err = capsys.readouterr().err
    assert rc == 0 and "2 array task(s) for 2 command(s) (2 already done)" in err
    assert {n: (slurm_dir / n).read_bytes() for n in files} == files
    assert "#SBATCH --array=0,3%2" in script.read_text().splitlines()
    other = tmp_path / "other.txt"
    other.write_text(cmds[3] + "\n")
    before = {n: (slurm_dir / n).read_bytes() for n in ("commands.txt", "done.txt", "job.sbatch")}
    rc = launch.main([str(other), "--mode", "slurm", "--cwd", str(work), "--slurm-dir", str(slurm_dir), "--no-submit"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "holds the files of another command list" in err[0]
    assert {n: (slurm_dir / n).read_bytes() for n in before} == before
    assert launch.main([str(other), "--mode", "slurm", "--cwd", str(work), "--slurm-dir", str(slurm_dir),
                        "--no-submit", "--force"]) == 2
    assert {n: (slurm_dir / n).read_bytes() for n in before} == before
    for name in before:
        (slurm_dir / name).unlink()
    assert launch.main([str(other), "--mode", "slurm", "--cwd", str(work), "--slurm-dir", str(slurm_dir),
                        "--no-submit"]) == 0
    assert (slurm_dir / "commands.txt").read_text() == cmds[3] + "\n"


def test_slurm_chunks_requeue_and_printed_defaults(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    work = tmp_path / "work"
    work.mkdir()
    cmds = [f"{py(f'open({name!r}, {chr(39)}w{chr(39)}).write({name!r})')} --output-dir out{i}"
            for i, name in enumerate(("r0", "r1", "r2", "r3", "r4"))]
    src = tmp_path / "cmds.txt"
    src.write_text("\n".join(cmds) + "\n")
    slurm_dir = work / "slurm"
    rc = launch.main([str(src), "--mode", "slurm", "--cwd", str(work), "--slurm-dir", str(slurm_dir), "--no-submit",
                      "--chunk", "2", "--requeue", "--time", "01:00:00"])
    err = capsys.readouterr().err
    assert rc == 0 and "3 array task(s) for 5 command(s)" in err
    # Resources left out are printed with their defaults; the one given is not.
    for key, default in (("gres", "gpu:1"), ("cpus", "8"), ("mem", "32G")):
        assert f"--{key} not given, using the default {default}" in err
    assert "--time not given" not in err
    text = (slurm_dir / "job.sbatch").read_text().splitlines()
    for line in ("#SBATCH --array=0-2%3", "#SBATCH --requeue", "#SBATCH --signal=B:USR1@120", "trap requeue USR1 TERM"):
        assert line in text
    # Task 1 runs lines 3 and 4; the last task holds the single line 5.
    env = dict(os.environ, SLURM_ARRAY_TASK_ID="1", SLURM_SUBMIT_DIR=str(work))
    res = subprocess.run(["bash", str(slurm_dir / "job.sbatch")], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in work.glob("r*")) == ["r2", "r3"]
    env["SLURM_ARRAY_TASK_ID"] = "2"
    res = subprocess.run(["bash", str(slurm_dir / "job.sbatch")], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0 and (work / "r4").exists()


def test_slurm_requeue_on_signal(tmp_path: Path) -> None:
    """SIGUSR1 (SLURM's warning) stops the running command with SIGTERM and requeues the task."""
    work = tmp_path / "work"
    (work / "bin").mkdir(parents=True)
    fake = work / "bin" / "scontrol"
    fake.write_text(f'#!/usr/bin/env bash\necho "$*" > {work / "requeued"}\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    child = py(f"import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: (open({str(work / 'term')!r}, "
               "'w').write('x'), sys.exit(143))); time.sleep(60)")
    options = launch.SlurmOptions(requeue=True)
    launch.write_slurm(launch.parse_commands(child + "\n"), str(work / "s"), options, str(work))
    env = dict(os.environ, SLURM_ARRAY_TASK_ID="0", SLURM_ARRAY_JOB_ID="7", SLURM_SUBMIT_DIR=str(work),
               PATH=f"{work / 'bin'}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.Popen(["bash", str(work / "s" / "job.sbatch")], cwd=work, env=env, stdout=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 30
    while "line 1" not in (proc.stdout.readline() or "") and time.time() < deadline:
        pass
    time.sleep(1.0)  # let the child install its handler
    proc.send_signal(signal.SIGUSR1)
    assert proc.wait(timeout=30) == 0
    assert (work / "term").exists()
    assert (work / "requeued").read_text().split() == ["requeue", "7_0"]


def test_thread_cap_no_retry_on_exit_2_and_quoted_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "threads.txt"
    cmds = tmp_path / "cmds.txt"
    counter = tmp_path / "count"
    deterministic = py(f"import sys; open({str(counter)!r}, 'a').write('x'); "
                       "print('error: unknown config key \"OPTIM.LRR\"', file=sys.stderr); sys.exit(2)")
    cmds.write_text("\n".join([
        py(f"import os, torch; open({str(out)!r}, 'w').write(f\"{{os.environ['OMP_NUM_THREADS']}} "
           f"{{os.environ['MKL_NUM_THREADS']}} {{torch.get_num_threads()}}\")"),
        deterministic,
        py("raise RuntimeError('boom in the job')"),
    ]) + "\n")
    rc = launch.main([str(cmds), "--workers", "2", "--threads", "1", "--retries", "2", "--log-dir",
                      str(tmp_path / "logs"), "--cwd", str(tmp_path), "--gpus", ""])
    err = capsys.readouterr().err
    assert rc == 1
    assert out.read_text().split() == ["1", "1", "1"]  # env cap, and torch in the child honours it
    assert counter.read_text() == "x"  # exit 2: never retried
    assert 'error: unknown config key "OPTIM.LRR"' in err  # the summary quotes the error line
    assert "RuntimeError: boom in the job" in err
    assert launch.default_threads(4, cores=2) == 1 and launch.default_threads(2, cores=16) == 8
    # only deterministic failures: the launch exits 2 as its jobs did (a mistake to fix, not a crash to rerun)
    cmds.write_text(deterministic + "\n" + py("pass") + "\n")
    rc = launch.main([str(cmds), "--retries", "2", "--log-dir", str(tmp_path / "logs2"), "--cwd", str(tmp_path),
                      "--gpus", ""])
    err = capsys.readouterr().err
    assert rc == 2 and counter.read_text() == "xx" and "succeeded 1, skipped 0, failed 1" in err


def test_exit_status_rule() -> None:
    from scripts.run_identity import exit_status

    assert exit_status([]) == 0
    assert exit_status([2, 2]) == 2
    assert exit_status([2, 1]) == exit_status([2, None]) == exit_status([-9]) == 1


def test_slurm_no_submit_and_all_done(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = tmp_path / "c.txt"
    src.write_text(f"{py('pass')}\n")
    rc = launch.main([str(src), "--mode", "slurm", "--no-submit", "--cwd", str(tmp_path),
                      "--slurm-dir", str(tmp_path / "s"), "--gres", ""])
    assert rc == 0
    text = (tmp_path / "s/job.sbatch").read_text()
    assert "#SBATCH --array=0%1" in text and "--gres" not in text and "--partition" not in text
    assert "sbatch" in capsys.readouterr().err

    (tmp_path / "o").mkdir()
    (tmp_path / "o/results.json").write_text("{}")
    src.write_text(f"{py('pass')} --output-dir {tmp_path / 'o'}\n")
    assert launch.main([str(src), "--mode", "slurm", "--slurm-dir", str(tmp_path / "s2")]) == 0
    assert "nothing to submit" in capsys.readouterr().err
    assert not (tmp_path / "s2").exists()


def test_force_lets_the_commands_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--force must reach the commands: train.py and lpclip refuse another configuration's folder unless
    told to overwrite, and a launch line may be any shell line, so the jobs (local pool and SLURM tasks)
    get FSNL_OVERWRITE=1 in their environment instead of an edited command line."""
    seen = tmp_path / "seen.txt"
    cmd = py(f"import os; open({str(seen)!r}, 'a').write(os.environ.get('FSNL_OVERWRITE', 'unset') + chr(10))")
    src = tmp_path / "cmds.txt"
    src.write_text(f"cd {shlex.quote(str(tmp_path))} && {cmd}\n")
    for extra in ([], ["--force"]):
        assert launch.main([str(src), "--log-dir", str(tmp_path / "logs"), "--cwd", str(tmp_path), *extra]) == 0
    assert seen.read_text().split() == ["unset", "1"]
    for extra, exported in (([], False), (["--force"], True)):
        slurm_dir = tmp_path / f"slurm{len(extra)}"
        assert launch.main([str(src), "--mode", "slurm", "--cwd", str(tmp_path), "--slurm-dir", str(slurm_dir),
                            "--no-submit", *extra]) == 0
        assert ("export FSNL_OVERWRITE=1" in (slurm_dir / "job.sbatch").read_text().splitlines()) is exported
    env = {k: v for k, v in os.environ.items() if k != "FSNL_OVERWRITE"}
    env.update(SLURM_ARRAY_TASK_ID="0", SLURM_SUBMIT_DIR=str(tmp_path))
    res = subprocess.run(["bash", str(tmp_path / "slurm1" / "job.sbatch")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert seen.read_text().split() == ["unset", "1", "1"]
    capsys.readouterr()


@pytest.mark.parametrize("case", ["unclosed_quote", "yaml_unclosed_quote", "bad_yaml", "missing", "directory",
                                  "binary", "nul_byte", "yaml_done_list", "yaml_done_newline"])
def test_bad_command_lists_are_one_line_before_any_job(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                         case: str) -> None:
    """Hostile command lists: the launch stops with one ``error:`` line naming the file (and the line)
    and exit 2 before any command runs. Before, an unclosed quote on line 4 ran lines 1-3 and then
    failed that line in bash; broken YAML was a traceback."""
    ran = tmp_path / "ran"
    first = py(f"open({str(ran)!r}, 'w').write('x')")
    src = tmp_path / ("cmds.yaml" if "yaml" in case else "cmds.txt")
    expected = {
        "unclosed_quote": "line 3 is not a complete shell command (no closing quotation)",
        "yaml_unclosed_quote": "commands[1] is not a complete shell command (no closing quotation)",
        "bad_yaml": "is not valid YAML (line 2)",
        "missing": "cannot read the command list",
        "directory": "cannot read the command list",
        "binary": "is not a UTF-8 text file",
        "nul_byte": "line 2 contains a NUL byte",
        "yaml_done_list": "commands[1]: 'done' must be a file path (a string), got [1, 2]",
        "yaml_done_newline": "commands[1]: 'done' 'a\\nb' holds a line break",
    }[case]
    if case == "unclosed_quote":
        src.write_text(f"{first}\n# comment\necho 'oops > x\n")
    elif case == "yaml_unclosed_quote":
        src.write_text(f"commands:\n  - {json.dumps(first)}\n  - \"echo 'oops\"\n")
    elif case == "bad_yaml":
        src.write_text(f"commands:\n  - [{first}\n")
    elif case == "directory":
        src.mkdir()
    elif case == "binary":
        src.write_bytes(b"\xff\xfe\x00 not text")
    elif case == "nul_byte":
        src.write_text(f"{first}\necho a\x00b\n")
    elif case == "yaml_done_newline":  # shifted done.txt by a line: a later command was skipped as finished
        src.write_text(f"commands:\n  - {json.dumps(first)}\n  - {{cmd: echo hi, done: \"a\\nb\"}}\n")
    elif case == "yaml_done_list":
        src.write_text(f"commands:\n  - {json.dumps(first)}\n  - {{cmd: echo hi, done: [1, 2]}}\n")
    rc = launch.main([str(src), "--cwd", str(tmp_path), "--log-dir", str(tmp_path / "logs")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith("error: ") and str(src) in err[0] and expected in err[0], err
    assert not ran.exists() and not (tmp_path / "logs").exists()


@pytest.mark.parametrize("extra,expected", [
    (["--cwd", "MISSING"], "--cwd"),
    (["--log-dir", "AFILE"], "is a file, not a directory"),
    (["--mode", "slurm", "--no-submit", "--slurm-dir", "AFILE"], "is a file, not a directory"),
    (["--workers", "-1"], "--workers -1: must be >= 0"),
    (["--threads", "-1"], "--threads -1: must be >= 0"),
    (["--retries", "-3"], "--retries -3: must be >= 0"),
    (["--mode", "slurm", "--cpus", "-4"], "--cpus -4: must be >= 1"),
    (["--mode", "slurm", "--chunk", "0"], "--chunk 0: must be >= 1"),
    (["--mode", "slurm", "--max-parallel", "-1"], "--max-parallel -1: must be >= 1"),
])
def test_bad_launch_options_are_one_line_before_any_job(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                         extra: list, expected: str) -> None:
    """Hostile: a missing --cwd failed every job in a thread traceback and the launch still exited 0; a
    file as --log-dir / --slurm-dir was a traceback; negative counts were clamped or written into the
    sbatch script (--cpus-per-task=-4)."""
    ran = tmp_path / "ran"
    src = tmp_path / "cmds.txt"
    src.write_text(py(f"open({str(ran)!r}, 'w').write('x')") + "\n")
    (tmp_path / "AFILE").write_text("mine")
    argv = [str(src), "--log-dir", str(tmp_path / "logs")]
    argv += [str(tmp_path / a) if a in ("MISSING", "AFILE") else a for a in extra]
    try:
        rc = launch.main(argv)
    except SystemExit as stop:
        rc = stop.code
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
    assert not ran.exists() and (tmp_path / "AFILE").read_text() == "mine" and not (tmp_path / "logs").exists()


def test_a_job_that_cannot_start_fails_and_earlier_logs_are_kept(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A job whose process cannot start is a failure (the launch exited 0 with "0 command(s)"), and a
    second launch into the same --log-dir keeps the first one's jobNNNN.log (renamed), never overwrites it."""
    src = tmp_path / "cmds.txt"
    src.write_text(py("print('first launch')") + "\n")
    logs = tmp_path / "logs"
    assert launch.main([str(src), "--log-dir", str(logs), "--cwd", str(tmp_path)]) == 0
    first = (logs / "job0000.log").read_text()
    assert "first launch" in first

    def cannot_start(*args, **kwargs):
        raise OSError(7, "Argument list too long")

    monkeypatch.setattr(launch.subprocess, "Popen", cannot_start)
    rc = launch.main([str(src), "--log-dir", str(logs), "--cwd", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 1 and "1 command(s): succeeded 0, skipped 0, failed 1" in err and "could not start" in err
    kept = [p for p in logs.iterdir() if p.name.startswith("job0000.log-")]
    assert len(kept) == 1 and kept[0].read_text() == first
    assert "could not start the job" in (logs / "job0000.log").read_text()


@pytest.mark.parametrize("case", ["log_is_dir", "sbatch_is_dir", "logs_is_file", "users_sbatch", "users_done"])
def test_launch_files_in_the_way_are_one_line_before_any_job(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                             case: str) -> None:
    """Hostile: a directory named job0000.log killed the worker and the launch hung forever; a directory
    or file where the SLURM folder's own files go was a traceback; a job.sbatch or done.txt of the user
    (no commands.txt of ours beside it) was silently replaced."""
    ran = tmp_path / "ran"
    src = tmp_path / "cmds.txt"
    src.write_text(py(f"open({str(ran)!r}, 'w').write('x')") + "\n")
    logs, slurm = tmp_path / "logs", tmp_path / "slurm"
    argv = [str(src), "--cwd", str(tmp_path), "--log-dir", str(logs)]
    if case == "log_is_dir":
        (logs / "job0000.log").mkdir(parents=True)
        expected = "job0000.log is in the way of a job's log"
    else:
        argv += ["--mode", "slurm", "--no-submit", "--slurm-dir", str(slurm)]
        slurm.mkdir()
        if case == "sbatch_is_dir":
            (slurm / "job.sbatch").mkdir()
            expected = "job.sbatch is in the way of the launch's own file"
        elif case == "logs_is_file":
            (slurm / "logs").write_text("mine")
            expected = "logs is in the way of the launch's own folder"
        else:
            (slurm / ("job.sbatch" if case == "users_sbatch" else "done.txt")).write_text("mine")
            expected = "holds files this launcher did not write"
    before = {p: (p.read_bytes() if p.is_file() else None) for p in sorted(tmp_path.rglob("*"))}
    rc = launch.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
    assert not ran.exists() and {p: (p.read_bytes() if p.is_file() else None) for p in sorted(tmp_path.rglob("*"))} == before
