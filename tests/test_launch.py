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

import train
from dassl import results
from dassl.utils import WriteError
from datasets.make_toy import make_toy
from scripts import grid, launch, sweep
from scripts.run_identity import command_argv, command_fingerprint, command_state, exit_status, invocation
from tests.helpers import train_argv

PY = shlex.quote(sys.executable)
REPO_TRAIN = shlex.quote(os.fspath(launch.REPO_ROOT / "train.py"))


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


def test_skip_only_on_identity_or_an_explicit_done_marker(tmp_path: Path) -> None:
    """A results.json in the folder of a command the launcher cannot read (not train.py / lpclip) proves
    nothing about that command: it runs (before, it was skipped, so ``python -c`` or a wrapper script
    never reran). A ``done:`` marker that is not a results.json is the user's own "finished" flag and
    skips by existence, as documented; after a run, an explicit results.json marker the job wrote
    counts as written."""
    foreign, flagged, wrote = tmp_path / "runA", tmp_path / "runB", tmp_path / "runC"
    for d in (foreign, flagged):
        d.mkdir()
    (foreign / "results.json").write_text("{}")
    (flagged / "done.flag").write_text("")
    ran = tmp_path / "ran.txt"

    def record(name: str) -> str:
        return py(f"open({str(ran)!r}, 'a').write({name!r})")

    write_results = py(f"import os; os.makedirs({str(wrote)!r}); open({str(wrote / 'results.json')!r}, 'w').write('{{}}')")
    text = ("commands:\n"
            f"  - {json.dumps(record('A') + f' --output-dir {foreign}')}\n"
            f"  - {{cmd: {json.dumps(record('B'))}, done: {json.dumps(str(flagged / 'done.flag'))}}}\n"
            f"  - {{cmd: {json.dumps(write_results)}, done: {json.dumps(str(wrote / 'results.json'))}}}\n")
    commands = launch.parse_commands(text)
    assert commands[0].done == str(foreign / "results.json")
    assert commands[0].state(str(tmp_path)).state == "missing"
    summary = launch.run_local(commands, workers=1, gpus=[], log_dir=str(tmp_path / "logs"), cwd=str(tmp_path))
    assert ran.read_text() == "A"  # runA ran in spite of its results.json; runB's flag skipped it
    assert [c.index for c in summary.skipped] == [1]
    assert [c.index for c in summary.succeeded] == [0, 2] and not summary.failed


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
    (work / "out1/done").write_text("")
    cmds = [f"{py(f'open({name!r}, {chr(39)}w{chr(39)}).write({name!r})')} --output-dir out{i}"
            for i, name in enumerate(("r0", "r1", "r2", "r3"))]
    src = tmp_path / "cmds.yaml"  # explicit markers: these stand-in commands have no fingerprint
    src.write_text("commands:\n" + "".join(f"  - {{cmd: {json.dumps(c)}, done: out{i}/done}}\n"
                                           for i, c in enumerate(cmds)))

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
    assert (slurm_dir / "done.txt").read_text().splitlines() == [f"out{i}/done" for i in range(4)]

    # Run array task 2 as SLURM would: it executes line 3 (the "r2" command) from the submit dir.
    env = dict(os.environ, SLURM_ARRAY_TASK_ID="2", SLURM_SUBMIT_DIR=str(work))
    res = subprocess.run(["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert (work / "r2").read_text() == "r2" and not (work / "r0").exists()
    # Once its marker exists the task is skipped instead of rerun.
    (work / "out2").mkdir()
    (work / "out2/done").write_text("")
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


@pytest.mark.parametrize("requeued", [True, False])
def test_slurm_requeue_on_signal(tmp_path: Path, requeued: bool) -> None:
    """SIGUSR1 (SLURM's warning) stops the running command with SIGTERM and requeues the task. A requeue
    that fails (not permitted, the job ending) ended the task with 0 too: SLURM marked it COMPLETED with
    its lines unrun. Now exit 1 and a line naming them."""
    work = tmp_path / "work"
    (work / "bin").mkdir(parents=True)
    fake = work / "bin" / "scontrol"
    fake.write_text(f'#!/usr/bin/env bash\necho "$*" > {work / "requeued"}\n' + ("" if requeued else "exit 1\n"))
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    child = py(f"import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: (open({str(work / 'term')!r}, "
               f"'w').write('x'), sys.exit(143))); open({str(work / 'ready')!r}, 'w').close(); time.sleep(60)")
    options = launch.SlurmOptions(requeue=True)
    launch.write_slurm(launch.parse_commands(child + "\n"), str(work / "s"), options, str(work))
    env = dict(os.environ, SLURM_ARRAY_TASK_ID="0", SLURM_ARRAY_JOB_ID="7", SLURM_SUBMIT_DIR=str(work),
               PATH=f"{work / 'bin'}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.Popen(["bash", str(work / "s" / "job.sbatch")], cwd=work, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while "line 1" not in (proc.stdout.readline() or "") and time.time() < deadline:
        pass
    while not (work / "ready").exists() and time.time() < deadline:  # the child's handler is installed
        time.sleep(0.05)  # (a fixed second was too short on a loaded machine: the child died unhandled)
    proc.send_signal(signal.SIGUSR1)
    assert proc.wait(timeout=30) == (0 if requeued else 1)
    assert (work / "term").exists()
    assert (work / "requeued").read_text().split() == ["requeue", "7_0"]
    err = proc.stderr.read()
    assert ("error: the requeue failed; lines 1 to 1 of" in err) != requeued, err


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


def test_the_cores_are_shared_among_the_workers_that_run(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """``--workers 8`` for two jobs runs two workers: each gets half the cores (it got an eighth), and
    the summary names the two (it printed the 8 asked for)."""
    monkeypatch.setattr(launch, "usable_cpus", lambda: 16)
    seen = tmp_path / "seen"
    cmds = tmp_path / "cmds.txt"
    cmds.write_text("\n".join(f'echo "$OMP_NUM_THREADS" >> {shlex.quote(str(seen))}' for _ in range(2)) + "\n")
    rc = launch.main([str(cmds), "--workers", "8", "--log-dir", str(tmp_path / "logs"), "--cwd", str(tmp_path),
                      "--gpus", ""])
    err = capsys.readouterr().err
    assert rc == 0 and seen.read_text().split() == ["8", "8"]
    assert "succeeded 2, skipped 0, failed 0 (2 worker(s)" in err, err


def test_threads_split_the_cpus_this_process_may_use(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 1-core allocation (``taskset -c 0``, a SLURM/cgroup share) on a 16-CPU node: each job got the
    node's count (os.cpu_count), the oversubscription the cap exists to prevent."""
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)
    assert launch.default_threads(1) == 1 and grid._threads_per_worker(1, 0) == 1


def test_sigterm_stops_the_running_jobs_and_waits_for_them(tmp_path: Path) -> None:
    """SIGTERM (``timeout``, a batch allocation ending) killed the launcher at once (exit 143, no line)
    and its job ran on with parent 1, holding its folder: the relaunch was refused as "in use"."""
    pid_file = tmp_path / "job.pid"
    cmds = tmp_path / "cmds.txt"
    cmds.write_text(f"echo $$ > {shlex.quote(str(pid_file))}; exec sleep 300\n")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "scripts.launch", str(cmds), "--log-dir", str(tmp_path / "logs"),
                             "--gpus", ""], cwd=launch.REPO_ROOT, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (pid_file.is_file() and pid_file.read_text().strip()) and time.time() < deadline:
        time.sleep(0.1)
    job = int(pid_file.read_text())
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "terminated (SIGTERM); running jobs were stopped" in err, err
    with pytest.raises(ProcessLookupError):
        os.kill(job, 0)


def test_exit_status_rule() -> None:
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
    (tmp_path / "o/done").write_text("")
    src = tmp_path / "c.yaml"
    src.write_text(f"commands:\n  - {{cmd: {json.dumps(py('pass'))}, done: {json.dumps(str(tmp_path / 'o/done'))}}}\n")
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
                                  "binary", "nul_byte", "yaml_done_list", "yaml_done_newline", "yaml_empty",
                                  "yaml_blank", "yaml_empty_cmd", "yaml_unknown_key", "yaml_done_empty",
                                  "yaml_done_twice", "yaml_done_twice_flow"])
def test_bad_command_lists_are_one_line_before_any_job(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                         case: str) -> None:
    """Hostile command lists: the launch stops with one ``error:`` line naming the file (and the line)
    and exit 2 before any command runs. Before, an unclosed quote on line 4 ran lines 1-3 and then
    failed that line in bash; broken YAML was a traceback; an empty YAML entry counted as succeeded
    locally and, in a SLURM chunk, stopped the task and dropped the chunk's later lines."""
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
        "yaml_empty": "commands[1] is empty; give it a command, or remove the entry",
        "yaml_blank": "commands[1] is empty; give it a command, or remove the entry",
        "yaml_empty_cmd": "commands[1] is empty; give it a command, or remove the entry",
        # both ran as if there were no marker
        "yaml_unknown_key": "commands[1] has unknown key(s) ['dnoe']",
        "yaml_done_empty": "commands[1]: 'done' is empty",
        # PyYAML kept the second marker silently: the entry was skipped when b.flag existed
        "yaml_done_twice": "is not valid YAML (line 4): key 'done' is given twice (first on line 3)",
        # the check compared lines: two keys of one flow mapping passed
        "yaml_done_twice_flow": "is not valid YAML (line 2): key 'done' is given twice (first on line 2)",
    }[case]
    head = f"commands:\n  - {json.dumps(first)}\n"  # a YAML list whose first entry would run
    text = {
        "unclosed_quote": f"{first}\n# comment\necho 'oops > x\n",
        "yaml_unclosed_quote": head + "  - \"echo 'oops\"\n",
        "bad_yaml": f"commands:\n  - [{first}\n",
        "nul_byte": f"{first}\necho a\x00b\n",
        # shifted done.txt by a line: a later command was skipped as finished
        "yaml_done_newline": head + "  - {cmd: echo hi, done: \"a\\nb\"}\n",
        "yaml_done_list": head + "  - {cmd: echo hi, done: [1, 2]}\n",
        "yaml_empty": head + '  - ""\n' + f"  - {json.dumps(first)}\n",
        "yaml_blank": head + '  - "   "\n' + f"  - {json.dumps(first)}\n",
        "yaml_empty_cmd": head + "  - {cmd: '', done: x.flag}\n",
        "yaml_unknown_key": head + "  - {cmd: echo hi, dnoe: x.flag}\n",
        "yaml_done_empty": head + "  - {cmd: echo hi, done: ''}\n",
        "yaml_done_twice_flow": f"commands:\n  - {{cmd: {json.dumps(first)}, done: a.flag, done: b.flag}}\n",
        "yaml_done_twice": f"commands:\n  - cmd: {json.dumps(first)}\n    done: a.flag\n    done: b.flag\n",
    }
    if case == "directory":
        src.mkdir()
    elif case == "binary":
        src.write_bytes(b"\xff\xfe\x00 not text")
    elif case in text:
        src.write_text(text[case])
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
    (["--threads", "100000"], "--threads 100000: more than the"),
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


@pytest.mark.parametrize("line,entry,args", [
    ("python train.py --seed 1", "train", ["--seed", "1"]),
    ("OMP_NUM_THREADS=1 python train.py --seed 1", "train", ["--seed", "1"]),
    ("env A=1 B='x y' python -u train.py --seed 1", "train", ["--seed", "1"]),
    ("/usr/bin/env A=1 python3 train.py", "train", []),
    ("A=1 env B=2 python3 -X dev -Wignore -OO -bb -uB ./train.py --seed 1", "train", ["--seed", "1"]),
    ("/usr/bin/python3.11 -Xfrozen_modules=off -W error REPO/train.py --seed 1", "train", ["--seed", "1"]),
    ("/venv/bin/python -E -s -S -I -q -v -O train.py --seed 1", "train", ["--seed", "1"]),
    ("python -m train --seed 1", "train", ["--seed", "1"]),
    ("python lpclip/linear_probe.py --dataset D", "probe", ["--dataset", "D"]),
    ("python3 REPO/lpclip/linear_probe.py --dataset D", "probe", ["--dataset", "D"]),
    ("python -u -mlpclip.linear_probe --dataset D", "probe", ["--dataset", "D"]),
    ("FSNL_OVERWRITE=1 python REPO/lpclip/feat_extractor.py --dataset D", "extract", ["--dataset", "D"]),
    ("python ./lpclip/../lpclip/feat_extractor.py --dataset D", "extract", ["--dataset", "D"]),
    ("python -m lpclip.feat_extractor --dataset D", "extract", ["--dataset", "D"]),
    # no identity can be read: never guessed (these run, and train.py / lpclip guard their own folders)
    ("bash scripts/fsnl/train.sh D O", "", []),
    ("cd sub && python train.py --seed 1", "", []),
    ("python -c 'print(1)' train.py", "", []),
    ("python -i train.py", "", []),
    ("python my_train.py --seed 1", "", []),
    ("pypy3 train.py", "", []),
    ("env -i python train.py", "", []),
    ("python -m lpclip.other --dataset D", "", []),
    ("OMP_NUM_THREADS=1", "", []),
])
def test_commands_are_read_through_prefixes_interpreter_options_and_paths(line: str, entry: str, args: list) -> None:
    """Hostile: ``OMP_NUM_THREADS=1 python train.py ...``, ``python -u train.py``, ``python3 -X dev ...``
    or the README's ``python lpclip/linear_probe.py`` were not recognised, and any results.json in their
    folder was taken for theirs."""
    repo = os.fspath(launch.REPO_ROOT)
    inv = invocation(shlex.split(line.replace("REPO", repo)), repo)
    assert (inv.entry, list(inv.args)) == (entry, args)


@pytest.mark.parametrize("value", ["1", "true", "YES", " on ", "0", "", "no", "2"])
def test_an_overwrite_prefix_reads_like_the_tools_read_it(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``FSNL_OVERWRITE=<v> python train.py`` asks to overwrite exactly when train.py, given that
    environment, would (``dassl.results.overwrite_requested``)."""
    monkeypatch.setenv(results.OVERWRITE_ENV, value)
    inv = invocation(["FSNL_OVERWRITE=" + value, "python", "train.py"])
    if value == "2":  # no on/off value: both refuse it (it read as off, and the run refused what it was to replace)
        for ask in (inv.asks_overwrite, results.overwrite_requested):
            with pytest.raises(WriteError, match="FSNL_OVERWRITE='2' is not an on/off switch"):
                ask()
    else:
        assert inv.asks_overwrite() is results.overwrite_requested()
    assert invocation(["python", "train.py", "--overwrite"]).asks_overwrite()


def test_an_overwrite_switch_that_is_no_switch_is_one_line_before_any_job(tmp_path: Path, toy_root: Path,
                                                                          capsys: pytest.CaptureFixture,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """``FSNL_OVERWRITE=y`` read as off: train.py refused the run of another configuration it was meant to
    replace, naming the switch as the fix. Now the run and a launch of it say so in one line."""
    out = tmp_path / "run"
    monkeypatch.setenv(results.OVERWRITE_ENV, "y")
    assert train.cli(train_argv(toy_root, out, "ZeroshotCLIP_openclip", extra=("--eval-only",))) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: FSNL_OVERWRITE='y' is not an on/off switch; set FSNL_OVERWRITE=1 to replace a run of " \
                  "another configuration, or unset it" and not out.exists()
    monkeypatch.delenv(results.OVERWRITE_ENV)
    cmd = shlex.join(["FSNL_OVERWRITE=y", sys.executable, "train.py", *train_argv(toy_root, out, "ZeroshotCLIP_openclip",
                                                                                 extra=("--eval-only",))])
    state = command_state(shlex.split(cmd), str(out / "results.json"))
    assert state.state == "invalid" and "FSNL_OVERWRITE='y' is not an on/off switch" in state.differences[0]


@pytest.fixture
def finished_run(tmp_path: Path) -> tuple:
    """A finished zero-shot run of the toy benchmark (its results.json, with the fingerprint its
    command records) and that command."""
    root = tmp_path / "toy"
    make_toy(str(root), domains=["Animals92_42"], image_size=8, num_train=2, num_val=1, num_test=1)
    (job,) = sweep.build_jobs(sweep.SweepSpec(method="zeroshot", root=str(root), out=str(tmp_path / "zs"),
                                              domains=["Animals"], seeds=[1]))
    results.write_results(str(Path(job.done).parent), {"trainer": "ZeroshotCLIP_openclip", "dataset": "Animals92_42",
                                                       "seed": 1, "accuracy": 5.0},
                          command_fingerprint(job.argv))
    assert job.argv[:2] == ("python", "train.py")
    return Path(job.done), job.argv[2:]


def test_a_command_that_cannot_run_is_named_as_such(finished_run: tuple, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    """A job whose own command does not parse, into a folder with a finished run: the refusal said the
    results.json "cannot be checked" and told the user to move it away; argparse's line came first."""
    marker, args = finished_run
    before = marker.read_bytes()
    src = tmp_path / "cmds.txt"
    src.write_text(f"python train.py --load-epoch abc {shlex.join(args)}\n")
    assert launch.main([str(src), "--cwd", os.fspath(launch.REPO_ROOT), "--log-dir", str(tmp_path / "logs")]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert err == [f"error: 1 job(s) cannot run: the one writing {marker}: the job's command line does not "
                   "parse: argument --load-epoch: invalid int value: 'abc'. Fix the command"], err
    assert marker.read_bytes() == before and not (tmp_path / "logs").exists()


@pytest.mark.parametrize("prefix", ["OMP_NUM_THREADS=1 python train.py", "env A=1 python -u train.py",
                                    "python3 -X dev -Wignore ./train.py", "PYTHON -B REPO/train.py",
                                    "FSNL_OVERWRITE=0 python train.py"])
@pytest.mark.parametrize("mode", ["local", "slurm"])
def test_another_config_in_a_prefixed_commands_folder_is_refused_not_skipped(
        finished_run: tuple, tmp_path: Path, capsys: pytest.CaptureFixture, prefix: str, mode: str) -> None:
    """Hostile (the most severe: silent reuse): a finished run with ``OPTIM.LR 0.002`` and a command with
    ``OPTIM.LR 0.5`` into the same folder, written ``OMP_NUM_THREADS=1 python train.py ...``: the launch
    reported it ``skipped``. Now one error line naming the key, exit 2, nothing run or written; the
    same configuration under the same prefix is still skipped."""
    marker, args = finished_run
    before = marker.read_bytes()
    head = prefix.replace("PYTHON", PY).replace("REPO", os.fspath(launch.REPO_ROOT))
    src = tmp_path / "cmds.txt"
    logs, slurm = tmp_path / "logs", tmp_path / "slurm"
    argv = [str(src), "--cwd", os.fspath(launch.REPO_ROOT), "--log-dir", str(logs)]
    if mode == "slurm":
        argv += ["--mode", "slurm", "--no-submit", "--slurm-dir", str(slurm)]
    src.write_text(f"{head} {shlex.join(args)} OPTIM.LR 0.5\n")
    assert launch.main(argv) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("error: 1 job(s) would overwrite a different finished run"), err
    assert f"{marker} differs in: OPTIM.LR 0.002 -> 0.5" in err[0]
    assert marker.read_bytes() == before and not logs.exists() and not slurm.exists()

    src.write_text(f"{head} {shlex.join(args)}\n")
    assert launch.main(argv) == 0
    err = capsys.readouterr().err
    assert ("skipped 1, failed 0" if mode == "local" else "all 1 command(s) are done") in err
    assert marker.read_bytes() == before and not any(logs.glob("job*.log")) and not slurm.exists()


def test_the_conflict_is_the_only_line_on_the_console(finished_run: tuple, tmp_path: Path) -> None:
    """In a real process: the launcher's checks build each job's config, whose INFO line (``MODEL.BACKBONE.
    WEIGHTS default -> ...`` of the mini CLIP) came out before the one ``error:`` line."""
    marker, args = finished_run
    before = marker.read_bytes()
    src = tmp_path / "cmds.txt"
    mini = [*args, "MODEL.BACKBONE.NAME", "mini-clip", "MODEL.BACKBONE.WEIGHTS", "default"]
    src.write_text(f"python train.py {shlex.join(mini)}\n")
    proc = subprocess.run([sys.executable, "-m", "scripts.launch", str(src), "--log-dir", str(tmp_path / "logs")],
                          cwd=launch.REPO_ROOT, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2 and not proc.stdout, proc
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: 1 job(s) would overwrite a different finished run"), lines
    assert lines[0].endswith("Fix: give those commands another output directory, or --force to overwrite")
    assert marker.read_bytes() == before and not (tmp_path / "logs").exists()


def test_a_command_that_asks_to_overwrite_is_not_refused(finished_run: tuple, tmp_path: Path) -> None:
    """``FSNL_OVERWRITE=1`` before a command (what ``--force`` sets for every job) or its own
    ``--overwrite`` replaces another configuration's run as asked: the launch schedules it instead of
    refusing it. A run of its own fingerprint is still skipped."""
    marker, args = finished_run
    cwd = os.fspath(launch.REPO_ROOT)
    lines = [f"FSNL_OVERWRITE=1 python train.py {shlex.join(args)} OPTIM.LR 0.5",
             f"python train.py --overwrite {shlex.join(args)} OPTIM.LR 0.5",
             f"FSNL_OVERWRITE=1 python train.py {shlex.join(args)}"]
    states = [c.state(cwd) for c in launch.parse_commands("\n".join(lines))]
    assert [s.state for s in states] == ["missing", "missing", "match"]
    assert states[0].differences == ["OPTIM.LR 0.002 -> 0.5"]


@pytest.mark.parametrize("case", ["same_dir", "relative_and_absolute", "output_dir_override", "repeated_line",
                                  "probe_default_dir", "extractor_file", "yaml", "slurm"])
def test_two_commands_writing_one_output_are_one_line_before_any_job(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                     case: str) -> None:
    """Hostile: two commands of one list with the same output directory ran side by side and one result
    was lost. Refused up front, naming both lines and the directory, in local and SLURM mode."""
    ran = tmp_path / "ran"
    first = py(f"open({str(ran)!r}, 'w').write('x')")
    work = tmp_path / "work"
    work.mkdir()
    train = "python train.py --trainer CoOp --seed 1"
    out = str(work / "out")
    pair = {
        "same_dir": (f"{train} --output-dir {out}", f"{train} --output-dir {out} OPTIM.LR 0.5"),
        "relative_and_absolute": (f"{train} --output-dir out/", f"OMP_NUM_THREADS=1 python -u {REPO_TRAIN} "
                                                                f"--seed 2 --output-dir {out}"),
        "output_dir_override": (f"{train} --output-dir {out}", f"{train} OUTPUT_DIR ./out"),
        "repeated_line": (f"{train} --output-dir {out}", f"{train} --output-dir {out}"),
        "probe_default_dir": ("python -m lpclip.linear_probe --feature-dir cf --dataset MiniFood --num-run 2",
                              "python lpclip/linear_probe.py --feature-dir cf --dataset MiniFood --num-run 3"),
        "extractor_file": ("python -m lpclip.feat_extractor --root data --dataset MiniFood --output-dir f "
                           "--split train val",
                           "python lpclip/feat_extractor.py --root data --dataset MiniFood --output-dir f --split test val"),
        "yaml": (f"{train} --output-dir {out}", f"{train} --output-dir {out} OPTIM.LR 0.5"),
        "slurm": (f"{train} --output-dir {out}", f"{train} --output-dir {out} OPTIM.LR 0.5"),
    }[case]
    shared = {"probe_default_dir": work / "cf/MiniFood/OOP/linear_probe",
              "extractor_file": work / "f/MiniFood/OOP/val.npz"}.get(case, work / "out")
    if case == "yaml":
        src = tmp_path / "cmds.yaml"
        src.write_text("commands:\n" + "".join(f"  - {json.dumps(c)}\n" for c in (first, pair[0], "echo x", pair[1])))
        where = "commands[1] and commands[3] both write"
    else:
        src = tmp_path / "cmds.txt"
        src.write_text(f"{first}\n# a comment\n{pair[0]}\n\n{pair[1]}\n")
        where = "line 5 repeats line 3 (both write" if case == "repeated_line" else "line 3 and line 5 both write"
    logs, slurm = tmp_path / "logs", tmp_path / "slurm"
    argv = [str(src), "--cwd", str(work), "--log-dir", str(logs), "--force"]  # --force cannot make it safe
    if case == "slurm":
        argv += ["--mode", "slurm", "--no-submit", "--slurm-dir", str(slurm)]
    before = sorted(tmp_path.rglob("*"))
    rc = launch.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: {src}: {where} {shared}"), err
    assert "remove the repeat" in err[0] if case == "repeated_line" else "its own --output-dir" in err[0]
    assert not ran.exists() and sorted(tmp_path.rglob("*")) == before


def test_distinct_outputs_are_not_a_collision(tmp_path: Path) -> None:
    """The check names only real collisions: other folders, other feature files of one folder (another
    split or subset), commands it cannot read (whatever they write) and lines that do not parse."""
    lines = ["python train.py --output-dir a", "python train.py --output-dir a/b", "python train.py --output-dir b",
             "python -m lpclip.feat_extractor --root d --dataset MiniFood --output-dir f --split train",
             "python -m lpclip.feat_extractor --root d --dataset MiniFood --output-dir f --split val",
             "python -m lpclip.feat_extractor --root d --dataset MiniFood --output-dir f --split val "
             "DATASET.SUB_CLASSES IP",
             "echo --output-dir a", "echo --output-dir a", "python train.py --no-such-option --output-dir a"]
    launch.check_outputs(launch.parse_commands("\n".join(lines)), str(tmp_path))


def test_blank_text_lines_are_skipped_and_never_reach_a_chunk(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Blank and whitespace-only lines of a text list are no commands: ``commands.txt`` holds the three
    commands back to back, and one ``--chunk 3`` task runs all three (an empty line there stopped it)."""
    work = tmp_path / "work"
    work.mkdir()
    cmds = [py(f"open({name!r}, 'w').write('x')") for name in ("r0", "r1", "r2")]
    src = tmp_path / "cmds.txt"
    src.write_text(f"\n{cmds[0]}\n   \n\t\n{cmds[1]}\n\n{cmds[2]}\n  \n")
    slurm = work / "slurm"
    assert launch.main([str(src), "--mode", "slurm", "--cwd", str(work), "--slurm-dir", str(slurm), "--no-submit",
                        "--chunk", "3"]) == 0
    assert "1 array task(s) for 3 command(s)" in capsys.readouterr().err
    assert (slurm / "commands.txt").read_text() == "".join(f"{c}\n" for c in cmds)
    env = dict(os.environ, SLURM_ARRAY_TASK_ID="0", SLURM_SUBMIT_DIR=str(work))
    res = subprocess.run(["bash", str(slurm / "job.sbatch")], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in work.glob("r*")) == ["r0", "r1", "r2"]


SHELL_LINES = ['python train.py a#b "x # y" OPTIM.LR 0.5   # train', "#all", "echo 'it''s' # c", "echo \\# x",
               'echo "a\\"#b" #c', "echo 'a\\' #b", "echo x\\ #y", "echo a  #", 'echo "#x" y']


@pytest.mark.parametrize("line", SHELL_LINES)
def test_command_words_are_the_shells(line: str) -> None:
    """Independent computation: bash's own word split of the line (``#`` starts a comment only at the
    start of a word outside quotes)."""
    words = subprocess.run(["bash", "-c", f"{sys.executable} -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "
                            f"{line}"], capture_output=True, text=True, check=True).stdout
    assert command_argv(line) == json.loads(words)


def test_a_trailing_comment_is_no_config_item(finished_run: tuple, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Hostile: ``... OPTIM.LR 0.002   # train`` ran (the shell drops the comment), but the skip check read
    ``#`` and ``train`` as config items, so the rerun of the finished line stopped the whole launch with
    "would overwrite a different finished run". The comment is dropped as the shell drops it."""
    marker, args = finished_run
    before = marker.read_bytes()
    src = tmp_path / "cmds.txt"
    argv = [str(src), "--cwd", os.fspath(launch.REPO_ROOT), "--log-dir", str(tmp_path / "logs")]
    src.write_text(f"OMP_NUM_THREADS=1 python train.py {shlex.join(args)}   # the zero-shot run\n")
    assert launch.main(argv) == 0
    assert "skipped 1, failed 0" in capsys.readouterr().err and marker.read_bytes() == before
    src.write_text(f"python train.py {shlex.join(args)} OPTIM.LR 0.5 # another LR\n")
    assert launch.main(argv) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "differs in: OPTIM.LR 0.002 -> 0.5" in err[0] and marker.read_bytes() == before


def test_a_utf8_bom_is_dropped(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Hostile: a list saved with a BOM (Windows editors) failed its first command at run time
    (``\\ufeffpython: command not found``), and a YAML list behind one was read as text lines."""
    ran = tmp_path / "ran"
    src = tmp_path / "cmds.txt"
    src.write_bytes(b"\xef\xbb\xbf" + (py(f"open({str(ran)!r}, 'a').write('t')") + "\n").encode())
    assert launch.main([str(src), "--cwd", str(tmp_path), "--log-dir", str(tmp_path / "l1")]) == 0
    assert ran.read_text() == "t"
    flag = tmp_path / "done.flag"
    flag.write_text("")
    yaml_text = ("\ufeffcommands:\n"
                 f"  - {{cmd: {json.dumps(py(f'open({str(ran)!r}, {chr(39)}a{chr(39)}).write({chr(39)}y{chr(39)})'))},"
                 f" done: {json.dumps(str(flag))}}}\n")
    (commands,) = launch.read_commands("-", stdin=io.StringIO(yaml_text))
    assert commands.explicit_done and commands.done == str(flag) and not commands.cmd.startswith("\ufeff")
    capsys.readouterr()


def test_more_workers_than_jobs_start_one_thread_per_job(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """``--workers 100000`` started 100000 threads for a one-line list and died with a traceback."""
    started = []
    real_start = launch.threading.Thread.start
    monkeypatch.setattr(launch.threading.Thread, "start", lambda self: (started.append(self), real_start(self))[1])
    out = tmp_path / "o.txt"
    src = tmp_path / "cmds.txt"
    src.write_text(writer(out) + "\n")
    assert launch.main([str(src), "--workers", "100000", "--log-dir", str(tmp_path / "logs")]) == 0
    assert out.is_file() and len(started) == 1
    assert "1 command(s): succeeded 1" in capsys.readouterr().err
