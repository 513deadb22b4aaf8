"""Run a sweep's commands in parallel: a local process pool over the visible GPUs, or a SLURM job array.

    python -m scripts.sweep --method fsnl --root DATA --out OUT --dry-run > cmds.txt
    python -m scripts.launch cmds.txt --workers 4 --retries 1          # local, one GPU per worker
    python -m scripts.sweep ... --dry-run --format yaml | python -m scripts.launch - --mode slurm \\
        --partition gpu --gres gpu:1 --time 12:00:00 --max-parallel 20

Input: a text file with one command per line (``#`` comments and blank lines ignored), or a YAML file
with a ``commands:`` list whose items are strings or ``{cmd: ..., done: ...}`` mappings (an empty one is
refused); ``-`` reads stdin; a UTF-8 BOM is dropped. A command's marker is its ``done`` file or, without
one, ``<--output-dir>/results.json``. A command is skipped only when that results.json holds a finished
run with the fingerprint the command would record (``scripts.run_identity``: ``train.py``,
``lpclip/linear_probe.py`` and ``lpclip/feat_extractor.py`` as module or path, under any ``python*``
interpreter, its options and ``NAME=VALUE`` / ``env`` prefixes; any other command's results.json proves
nothing and it runs); a ``done`` marker that is not a results.json counts when the file exists. A
finished run of a *different* fingerprint stops the launch before anything runs, with one ``error:``
line naming the differing keys (``--force`` overwrites, and so does a command that carries
``FSNL_OVERWRITE=1`` or ``--overwrite`` itself). So a launch can be repeated after failures or
preemption. Two commands that write the same output directory (or feature file) would run side by side
and one result would be lost: the launch refuses them up front, naming both lines (an identical line
twice too: remove the repeat).

Local mode keeps a queue and ``--workers`` threads, each pinned to one GPU of ``--gpus`` /
``CUDA_VISIBLE_DEVICES`` / ``torch.cuda.device_count()`` (round robin when there are more workers
than GPUs; no GPU → no pinning). Each job runs with ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` set to
``--threads`` (default: CPU cores // the workers that run, at most one per job), which is the number of threads torch takes in the
child: without the cap every worker starts one thread per core and the pool runs slower than the jobs
one after another. Every job writes ``<log-dir>/jobNNNN.log`` and ends with one console line (done /
failed, done count and ETA). A failed job goes back to the end of the queue up to ``--retries`` times,
except exit code 2, a deterministic error (a config or data mistake) that would fail again. The exit
status is 1 when any job failed for good (2 when every failure was such an exit 2, so a wrapper can
tell a mistake to fix from a crash to rerun); the summary quotes each failure's error line.

SLURM mode writes ``commands.txt`` (every command of the list, each on its line, so resubmitting the
same list rewrites the same file; a folder holding another list's files, or files this launcher did not
write, is refused),
``done.txt`` (the marker of each line) and ``job.sbatch`` (an ``--array=<tasks>%M`` script over the tasks
that hold a pending line; task i runs ``--chunk`` consecutive lines, each unless its marker exists: many
short runs share one task; a grid engine command is a natural unit of its own) and submits it with
``sbatch`` (``--no-submit`` only writes). With ``--requeue`` the job asks SLURM for a signal
two minutes before the time limit or on preemption (``--signal=B:USR1@120``, ``--requeue``); the task
then stops the running command with SIGTERM (checkpoints are written atomically, and ``scripts.grid``
finishes its running cell first), requeues itself with ``scontrol requeue`` and, back in the queue,
skips what finished: each line's marker is checked with ``python -m scripts.run_identity``
(finished with the same fingerprint: skip; missing: run; another run there: the task fails with
the error line), with the interpreter that wrote the script unless ``FSNL_PYTHON`` names another. Resource options not given on the command line are printed with their defaults.
There is deliberately no scheduler of our own beyond that.

Why no multi-GPU (DDP) inside one run: FSNL's trainable state is a few name embeddings (kilobytes)
and its step cost is dominated by the frozen encoders on a few hundred images, so a run fits one GPU
with room to spare, and gradient synchronisation would only add overhead. What is large is the number
of runs (9 domains × 5 shot counts × 3 seeds × 6 methods), and those are independent: running them
side by side, one per GPU, scales perfectly with no communication at all.
"""
from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run by path (python dir/script.py): the repo root goes first on sys.path, as under -m
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
if __name__ == "__main__":  # a Ctrl-C during the imports below: one line, not a traceback
    from dassl.ctrl_c import quiet_ctrl_c_while_loading

    quiet_ctrl_c_while_loading()

import argparse
import contextlib
import datetime
import io
import json
import logging
import os
import os.path as osp
import queue
import shlex
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Sequence, TextIO, Tuple

import torch
import yaml

from dassl import results
from dassl.cli import ArgumentParser, console_logging
from dassl.utils import (
    absolute_path,
    atomic_write_text,
    check_cpu_option,
    check_writable_dir,
    load_yaml,
    usable_cpus,
)
from scripts import grid, sweep
from scripts.domains import REPO_ROOT
from scripts.run_identity import (
    CONFLICTS,
    DETERMINISTIC_EXIT,
    RunConflict,
    command_argv,
    command_outputs,
    command_state,
    conflict_message,
    exit_status,
)

__all__ = [
    "Command",
    "LaunchSummary",
    "SlurmOptions",
    "read_commands",
    "parse_commands",
    "check_outputs",
    "done_marker",
    "visible_gpus",
    "split_done",
    "run_local",
    "slurm_script",
    "write_slurm",
    "submit_slurm",
    "main",
]

logger = logging.getLogger(__name__)

RESULTS_FILE = results.RESULTS_FILE
#: The line that marks a job.sbatch as this launcher's (a folder's files are replaced only then)
SCRIPT_MARK = "# Written by scripts/launch.py"
#: Resources of an array task when the command line does not say (printed when used).
SLURM_DEFAULTS = {"gres": "gpu:1", "time": "24:00:00", "cpus": 8, "mem": "32G"}
_NO_GPU = frozenset({"", "-1", "none", "None"})


@dataclass
class Command:
    """One line of a sweep: the shell command, the file that marks it as done (if known) and where the
    list holds it (``line 4`` / ``commands[3]``, for error lines)."""

    index: int
    cmd: str
    done: Optional[str] = None
    explicit_done: bool = False
    where: str = ""

    def is_done(self, cwd: Optional[str] = None) -> bool:
        """Whether the marker holds this command's finished run (``scripts.run_identity``); a relative
        marker is relative to the jobs' working directory."""
        return self.state(cwd).done

    def written(self, cwd: Optional[str] = None) -> bool:
        """After the job: whether it left its marker (a finished run of its fingerprint, or, for a
        command whose identity is unknown, the file)."""
        workdir = cwd or os.fspath(REPO_ROOT)
        return bool(self.done) and (self.is_done(workdir) or osp.isfile(osp.join(workdir, self.done)))

    def state(self, cwd: Optional[str] = None) -> results.Finished:
        if not self.done:
            return results.Finished("missing", "")
        try:
            argv = command_argv(self.cmd)
        except ValueError:
            argv = []
        return command_state(argv, self.done, cwd)


@dataclass
class LaunchSummary:
    succeeded: List[Command] = field(default_factory=list)
    skipped: List[Command] = field(default_factory=list)
    failed: List[Tuple[Command, str, str]] = field(default_factory=list)  # (command, reason, log file)
    error_lines: Dict[int, str] = field(default_factory=dict)  # command index → the log's error line
    exit_codes: Dict[int, Optional[int]] = field(default_factory=dict)  # command index → a failed job's exit code
    attempts: Dict[int, int] = field(default_factory=dict)
    workers: int = 0  # the worker threads the pool ran: at most one per pending job

    def line(self) -> str:
        total = len(self.succeeded) + len(self.skipped) + len(self.failed)
        return (f"{total} command(s): succeeded {len(self.succeeded)}, skipped {len(self.skipped)}, "
                f"failed {len(self.failed)}")


@dataclass
class SlurmOptions:
    job_name: str = "fsnl-sweep"
    partition: Optional[str] = None
    gres: Optional[str] = "gpu:1"
    time: str = "24:00:00"
    cpus: int = 8
    mem: str = "32G"
    max_parallel: int = 32
    account: Optional[str] = None
    chunk: int = 1
    requeue: bool = False
    #: --force: the tasks' commands replace runs of other configurations (``FSNL_OVERWRITE=1``)
    overwrite: bool = False
    setup: Sequence[str] = ()
    extra: Sequence[str] = ()


# ------------------------------------------------------------------------------------ input


def done_marker(cmd: str) -> Optional[str]:
    """``<--output-dir>/results.json`` of a command line, or None when it has no ``--output-dir``."""
    try:
        tokens = command_argv(cmd)
    except ValueError:
        return None
    for i, tok in enumerate(tokens):
        if tok == "--output-dir" and i + 1 < len(tokens):
            return os.path.join(tokens[i + 1], RESULTS_FILE)
        if tok.startswith("--output-dir="):
            return os.path.join(tok.split("=", 1)[1], RESULTS_FILE)
    return None


#: The keys of a YAML command entry.
ENTRY_KEYS = ("cmd", "command", "done")


def _entry(index: int, item: object, where: str = "") -> Command:
    """Command ``index`` (``where`` names it in errors: its line, or ``commands[i]`` of a YAML list).
    A line the shell cannot parse (an unclosed quote) is refused here, before any command runs: bash
    would only report it when the pool reached that line. So is an empty command (``- ""`` in YAML): a
    SLURM task stopped at it and dropped the rest of its chunk, the local pool counted it as succeeded."""
    where = where or f"commands[{index}]"
    if isinstance(item, str):
        cmd, done = item, None
    elif isinstance(item, dict) and isinstance(item.get("cmd", item.get("command")), str):
        unknown = sorted(str(k) for k in item if k not in ENTRY_KEYS)
        if unknown or ("cmd" in item and "command" in item):  # ignored without a word before (a typo'd 'done')
            what = f"unknown key(s) {unknown}" if unknown else "both 'cmd' and 'command'"
            raise ValueError(f"{where} has {what}; an entry takes 'cmd' (or 'command') and 'done'")
        cmd, done = item.get("cmd", item.get("command")), item.get("done")
    else:
        raise ValueError(f"{where} must be a string or a mapping with 'cmd', got {item!r}")
    cmd = cmd.strip()
    if not cmd:
        raise ValueError(f"{where} is empty; give it a command, or remove the entry")
    if "\n" in cmd:
        raise ValueError(f"{where} spans several lines; give one command per entry")
    if "\x00" in cmd:
        raise ValueError(f"{where} contains a NUL byte; a shell command cannot")
    if done is not None and not isinstance(done, str):
        raise ValueError(f"{where}: 'done' must be a file path (a string), got {done!r}")
    if done is not None and not done.strip():  # ran as if there were no marker
        raise ValueError(f"{where}: 'done' is empty; give the file the command writes when it finishes, or leave "
                         "'done' out")
    if done is not None and any(ch in done for ch in "\n\r\x00"):
        raise ValueError(f"{where}: 'done' {done!r} holds a line break or NUL byte (done.txt has one marker per line)")
    try:
        command_argv(cmd)
    except ValueError as err:
        raise ValueError(f"{where} is not a complete shell command ({str(err).lower()}): {cmd}; "
                         "fix its quoting") from None
    if done:
        return Command(index, cmd, str(done), True, where)
    return Command(index, cmd, done_marker(cmd), False, where)


def parse_commands(text: str, yaml_hint: bool = False) -> List[Command]:
    """Commands from the text of a command list (one per line) or of a YAML with ``commands:``. A
    leading UTF-8 BOM (Windows editors write one) is dropped: it became part of the first command
    (``\ufeffecho: command not found``) and hid a YAML list's ``commands:``."""
    text = text.removeprefix("\ufeff")
    stripped = text.lstrip()
    if yaml_hint or stripped.startswith("commands:"):
        data = load_yaml(text) or {}  # a second 'done:' in an entry replaced the first silently
        if not isinstance(data, dict) or not isinstance(data.get("commands"), list):
            raise ValueError("a YAML sweep must be a mapping with a 'commands:' list")
        return [_entry(i, item) for i, item in enumerate(data["commands"])]
    lines = [(n, ln.strip()) for n, ln in enumerate(text.splitlines(), 1)]
    kept = [(n, ln) for n, ln in lines if ln and not ln.startswith("#")]
    return [_entry(i, ln, f"line {n}") for i, (n, ln) in enumerate(kept)]


def _source_name(source: str) -> str:
    return "stdin" if source == "-" else source


def read_commands(source: str, stdin: Optional[TextIO] = None) -> List[Command]:
    """The commands of file ``source`` (``-``: stdin); a malformed entry is a ValueError naming both."""
    name = _source_name(source)
    try:
        if source == "-":
            text, yaml_hint = (stdin or sys.stdin).read(), False
        else:
            path = Path(source)
            text, yaml_hint = path.read_text(encoding="utf-8"), path.suffix.lower() in (".yaml", ".yml")
        return parse_commands(text, yaml_hint=yaml_hint)
    except OSError as err:
        raise ValueError(f"cannot read the command list {name}: {(err.strerror or str(err)).lower()}") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{name} is not a UTF-8 text file (byte {err.start}); give a command list") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ValueError(f"{name} is not valid YAML{where}: {getattr(err, 'problem', None) or err}") from None
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None


def check_outputs(commands: Sequence[Command], cwd: Optional[str] = None) -> None:
    """Raise a one-line ValueError when two commands write the same output directory (``train.py``,
    the probe) or feature file (the extractor), naming both: they would run side by side (another
    worker, another array task) and one result would be lost. Only commands whose outputs
    ``scripts.run_identity.command_outputs`` can tell, and a ``scripts.grid`` / ``scripts.sweep`` line
    twice (:func:`_sweep_identity`: the same options, however written); an identical line twice is
    refused the same way rather than dropped, so that the list, ``commands.txt`` and the job numbers stay line for line."""
    workdir = cwd or os.fspath(REPO_ROOT)
    owner: Dict[str, Command] = {}
    lines: Dict[Tuple[str, ...], Command] = {}
    for c in commands:
        try:
            argv = command_argv(c.cmd)
        except ValueError:  # refused by _entry already
            continue
        outputs = command_outputs(argv, workdir)
        sweep_key = _sweep_identity(argv, workdir)
        first_line = lines.setdefault(sweep_key, c) if sweep_key is not None else c
        if first_line is not c:  # a scripts.grid line twice: its cells ran twice at once
            a, b = first_line.where or f"command {first_line.index}", c.where or f"command {c.index}"
            raise ValueError(f"{b} repeats {a}; both would run at once, writing the same files. Remove the repeat")
        for path in outputs:
            first = owner.setdefault(path, c)
            if first is c:
                continue
            a, b = first.where or f"command {first.index}", c.where or f"command {c.index}"
            if first.cmd == c.cmd:
                raise ValueError(f"{b} repeats {a} (both write {path}); remove the repeat")
            raise ValueError(f"{a} and {b} both write {path}; they would run side by side and one result would "
                             "be lost. Give each its own --output-dir")


#: The project's commands that write a whole tree of runs under their ``--out``, and their parsers.
_SWEEPS = {"scripts.grid": grid._parser, "scripts.sweep": sweep._parser}
#: Their options that name a path: compared resolved (``--out d/`` is ``--out d``).
_SWEEP_PATHS = ("out", "root", "feature_dir")


def _sweep_identity(argv: Sequence[str], workdir: str) -> Optional[Tuple[str, ...]]:
    """What a ``scripts.grid`` / ``scripts.sweep`` line (``-m`` or the file, after any interpreter and
    ``NAME=VALUE`` prefix) runs: the module and its parsed options, paths resolved in ``workdir``. Two
    lines with one identity run the same cells side by side. None for any other command (``echo`` may
    repeat); a line its parser refuses is compared as written (the job reports its own error)."""
    for i, tok in enumerate(argv):
        if tok == "-m" and i + 1 < len(argv):
            module, rest = argv[i + 1], argv[i + 2:]
        elif tok.startswith("-m") and len(tok) > 2:
            module, rest = tok[2:], argv[i + 1:]
        elif tok.endswith(".py"):
            parts = Path(osp.normpath(tok)).with_suffix("").parts
            module, rest = ".".join(parts[-2:]), argv[i + 1:]
        else:
            continue
        if module not in _SWEEPS:
            return None
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                values = vars(_SWEEPS[module]().parse_args(list(rest)))
        except SystemExit:
            return (module, *rest)
        for key in _SWEEP_PATHS:
            if isinstance(values.get(key), str) and values[key]:
                values[key] = osp.realpath(absolute_path(osp.join(workdir, values[key])))
        return (module, json.dumps(values, sort_keys=True, default=str))
    return None


def visible_gpus(explicit: Optional[str] = None) -> List[str]:
    """GPU ids to hand out: ``--gpus``, else ``CUDA_VISIBLE_DEVICES``, else ``torch.cuda.device_count()``."""
    spec = explicit if explicit is not None else os.environ.get("CUDA_VISIBLE_DEVICES")
    if spec is not None:
        spec = spec.strip()
        return [] if spec in _NO_GPU else [g.strip() for g in spec.split(",") if g.strip()]
    try:
        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception as err:  # a broken driver means "no GPU to hand out"
        logger.debug("torch.cuda unavailable (%s); running without GPU pinning", err)
        return []


# ------------------------------------------------------------------------------------ local

#: Exit code of a deterministic error (config / data mistake): retrying cannot help.
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def default_threads(workers: int, cores: Optional[int] = None) -> int:
    """CPU threads per worker: the cores shared evenly, at least one."""
    return max(1, (cores or usable_cpus()) // max(1, workers))


def error_line(log_path: str) -> str:
    """The line that says why a job failed: the last ``error:`` line of its log, else the last
    exception line of a traceback, else the last non-empty line."""
    try:
        lines = [ln.strip() for ln in Path(log_path).read_text(encoding="utf-8", errors="replace").splitlines()]
    except OSError:
        return ""
    lines = [ln for ln in lines if ln and not ln.startswith("# ")]
    for ln in reversed(lines):
        if ln.startswith("error:"):
            return ln
    for ln in reversed(lines):
        if ln.split(":", 1)[0].endswith(("Error", "Exception", "Interrupt")):
            return ln
    return lines[-1] if lines else ""


def _eta(done: int, total: int, elapsed: float) -> str:
    if done <= 0 or done >= total:
        return "0:00:00"
    return str(datetime.timedelta(seconds=int(elapsed / done * (total - done))))



def split_done(commands: Sequence[Command], force: bool = False,
               cwd: Optional[str] = None) -> Tuple[List[Command], List[Command]]:
    """(pending, done); raises :class:`RunConflict` (one line) when a command's output holds a
    finished run of another fingerprint, unless ``force``."""
    if force:
        return list(commands), []
    workdir = cwd or os.fspath(REPO_ROOT)
    states = [c.state(workdir) for c in commands]
    if any(s.state in CONFLICTS for s in states):
        raise RunConflict(conflict_message(states, "give those commands another output directory"))
    return ([c for c, s in zip(commands, states) if not s.done], [c for c, s in zip(commands, states) if s.done])


def _keep_earlier_log(path: Path) -> None:
    """An earlier launch's log of the same job number is renamed ``jobNNNN.log-<its time>`` (as
    ``train.py`` rotates ``log.txt``), never overwritten."""
    if not path.is_file():
        return
    stamp = datetime.datetime.fromtimestamp(path.stat().st_mtime).strftime("%Y-%m-%d-%H-%M-%S")
    target, n = path.with_name(f"{path.name}-{stamp}"), 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}-{stamp}.{n}")
    path.rename(target)


class Terminated(KeyboardInterrupt):
    """SIGTERM (``timeout``, systemd, a batch allocation ending), handled as Ctrl-C is: the running jobs
    are stopped and waited for. Before, the launcher died at once and its jobs ran on, orphaned."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


def run_local(
    commands: Sequence[Command],
    workers: int,
    gpus: Sequence[str],
    retries: int = 0,
    log_dir: str = "output/launch",
    cwd: Optional[str] = None,
    force: bool = False,
    threads: Optional[int] = None,
) -> LaunchSummary:
    """Run ``commands`` on a pool of ``workers`` threads; each job is a ``bash -c`` subprocess with
    ``threads`` CPU threads (default :func:`default_threads`)."""
    summary = LaunchSummary()
    logs = Path(log_dir)
    workdir = cwd or os.fspath(REPO_ROOT)
    todo: queue.Queue[Optional[Command]] = queue.Queue()
    pending, summary.skipped = split_done(commands, force, workdir)
    log_paths = [logs / f"job{c.index:04d}.log" for c in pending]
    blocked = [p for p in log_paths if os.path.lexists(p) and (p.is_symlink() or not p.is_file())]
    if blocked:  # a worker would die opening it, and the pool would wait for it forever
        raise RunConflict(f"{blocked[0]} is in the way of a job's log (not a regular file); move it away or use "
                          "another --log-dir")
    logs.mkdir(parents=True, exist_ok=True)  # only now: a refused launch leaves nothing behind
    for c, path in zip(pending, log_paths):
        _keep_earlier_log(path)
        todo.put(c)
    lock = threading.Lock()
    running: Dict[int, subprocess.Popen] = {}
    stop = threading.Event()
    total = todo.qsize()
    # no more workers than jobs: --workers 100000 started as many threads and died of it (a traceback);
    # and the cores are shared among the workers that run, not the ones asked for (--workers 8 for two
    # jobs on 16 cores gave each 2 threads, not 8)
    summary.workers = max(1, min(workers, total))
    per_worker = int(threads) if threads else default_threads(summary.workers)
    started = time.time()

    def work(slot: int) -> None:
        gpu = gpus[slot % len(gpus)] if gpus else None
        env = dict(os.environ)
        for name in THREAD_ENV:
            env[name] = str(per_worker)
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        if force:  # the jobs replace a run of another configuration instead of refusing it
            env[results.OVERWRITE_ENV] = "1"
        while True:
            c = todo.get()
            if c is None:
                todo.task_done()
                return
            try:
                if stop.is_set():
                    continue
                with lock:
                    attempt = summary.attempts.get(c.index, 0) + 1
                    summary.attempts[c.index] = attempt
                log_path = logs / f"job{c.index:04d}.log"
                rc, unstarted = None, "could not start"
                try:
                    with open(log_path, "a" if attempt > 1 else "w", encoding="utf-8") as log:
                        log.write(f"# attempt {attempt}, worker {slot}, CUDA_VISIBLE_DEVICES={gpu if gpu is not None else '(unset)'}\n")
                        log.write(f"# {c.cmd}\n")
                        log.flush()
                        logger.info("[job %d, attempt %d, gpu %s] %s", c.index, attempt, gpu, c.cmd)
                        try:
                            proc = subprocess.Popen(["bash", "-c", c.cmd], cwd=workdir, env=env, stdout=log,
                                                    stderr=subprocess.STDOUT)
                        except (OSError, ValueError) as err:  # counted as failed, never silently lost
                            proc, rc = None, None
                            log.write(f"error: could not start the job: {err}\n")
                        if proc is not None:
                            with lock:
                                running[c.index] = proc
                            rc = proc.wait()
                            with lock:
                                running.pop(c.index, None)
                except OSError as err:  # its log cannot be written: a failed job, never a dead worker
                    unstarted = f"could not write its log {log_path}: {err.strerror or err}"
                reason = ""
                if rc is None:
                    reason = unstarted
                elif rc != 0:
                    reason = f"exit code {rc}"
                elif c.explicit_done and not c.written(workdir):
                    reason = f"exit code 0 but {c.done} was not written"
                elif c.done and not c.written(workdir):
                    logger.warning("job %d finished but %s does not exist", c.index, c.done)
                with lock:
                    retry = reason and rc != DETERMINISTIC_EXIT and attempt <= retries and not stop.is_set()
                    if not reason:
                        summary.succeeded.append(c)
                    elif retry:
                        logger.warning("job %d failed (%s); retrying later (see %s)", c.index, reason, log_path)
                        todo.put(c)
                    else:
                        summary.failed.append((c, reason, str(log_path)))
                        summary.error_lines[c.index] = error_line(str(log_path))
                        summary.exit_codes[c.index] = rc
                    if not retry:
                        finished = len(summary.succeeded) + len(summary.failed)
                        eta = _eta(finished, total, time.time() - started)
                        if reason:
                            why = summary.error_lines.get(c.index) or reason
                            logger.info("[%d/%d] FAILED job %d (%s): %s  ETA %s", finished, total, c.index,
                                        reason, why, eta)
                        else:
                            logger.info("[%d/%d] done job %d  ETA %s", finished, total, c.index, eta)
            finally:
                todo.task_done()

    pool = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(summary.workers)]
    for t in pool:
        t.start()
    try:
        # join() in small steps so that Ctrl-C reaches the main thread.
        while todo.unfinished_tasks:
            time.sleep(0.05)
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (:class:`Terminated`)
        stop.set()
        with lock:
            procs = list(running.values())
        for proc in procs:
            proc.terminate()
        try:  # wait for them: a job left running held its folder, and the relaunch was refused as "in use"
            for proc in procs:
                proc.wait()
        except KeyboardInterrupt:  # a second signal: do not wait
            for proc in procs:
                proc.kill()
        raise
    finally:
        for _ in pool:
            todo.put(None)
    for t in pool:
        t.join()
    return summary


# ------------------------------------------------------------------------------------ SLURM


def _rel(path: Path, cwd: Path) -> str:
    try:
        return os.fspath(path.resolve().relative_to(cwd.resolve()))
    except ValueError:
        return os.fspath(path.resolve())


def _index_ranges(ids: Sequence[int]) -> str:
    """SLURM's array index list for sorted ``ids``: ``0-2,5,7-9``."""
    parts: List[str] = []
    start = prev = ids[0]
    for i in list(ids[1:]) + [None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if i is not None:
            start = prev = i
    return ",".join(parts)


def slurm_script(
    num_tasks: int, commands_file: str, done_file: str, log_dir: str, options: SlurmOptions,
    task_ids: Optional[Sequence[int]] = None,
) -> str:
    """Text of an array job over ``num_tasks`` command lines, ``options.chunk`` lines per task; only the
    array tasks ``task_ids`` (default: all) are submitted."""
    if num_tasks < 1:
        raise ValueError("a SLURM array needs at least one command")
    num_tasks = -(-num_tasks // max(1, int(options.chunk)))  # array tasks of --chunk commands each
    ids = sorted(set(task_ids)) if task_ids is not None else list(range(num_tasks))
    if not ids or ids[0] < 0 or ids[-1] >= num_tasks:
        raise ValueError(f"array task ids {list(task_ids or [])} outside 0..{num_tasks - 1}")
    throttle = max(1, min(options.max_parallel, len(ids)))
    lines = ["#!/usr/bin/env bash", f"#SBATCH --job-name={options.job_name}",
             f"#SBATCH --array={_index_ranges(ids)}%{throttle}"]
    if options.partition:
        lines.append(f"#SBATCH --partition={options.partition}")
    if options.account:
        lines.append(f"#SBATCH --account={options.account}")
    if options.gres:
        lines.append(f"#SBATCH --gres={options.gres}")
    lines += [
        f"#SBATCH --time={options.time}",
        f"#SBATCH --cpus-per-task={options.cpus}",
        f"#SBATCH --mem={options.mem}",
        f"#SBATCH --output={log_dir}/%x-%A_%a.out",
    ]
    lines += [f"#SBATCH {extra}" for extra in options.extra]
    if options.requeue:
        lines += ["#SBATCH --requeue", "#SBATCH --signal=B:USR1@120"]
    chunk = max(1, int(options.chunk))
    lines += [
        f"{SCRIPT_MARK}: array task i runs lines i*{chunk}+1 .. (i+1)*{chunk} of the commands",
        "# file, each unless the marker on the same line of the done file holds this command's finished run",
        "# (same fingerprint; finished runs are never repeated, and a different run there is an error).",
        "set -uo pipefail",
        'cd "${SLURM_SUBMIT_DIR:-.}"',
        f"COMMANDS={shlex.quote(commands_file)}",
        f"DONE={shlex.quote(done_file)}",
        f"CHUNK={chunk}",
        "CHILD=",
    ]
    if options.overwrite:
        lines += ["# --force: each command replaces a run of another configuration in its folder",
                  f"export {results.OVERWRITE_ENV}=1"]
    if options.requeue:
        lines += [
            "# Preemption or the time limit: stop the running command (SIGTERM; checkpoints are atomic and the",
            "# grid engine finishes its cell), then put this task back in the queue.",
            "requeue() {",
            '  echo "signal received: stopping and requeueing"',
            '  if [ -n "$CHILD" ]; then kill -TERM "$CHILD" 2>/dev/null; wait "$CHILD"; fi',
            '  if ! scontrol requeue "${SLURM_ARRAY_JOB_ID:-${SLURM_JOB_ID}}_${SLURM_ARRAY_TASK_ID}"; then',
            "    # not requeued (not permitted, or the job is ending): a success here marked the task",
            "    # COMPLETED with its lines unrun; the failure keeps it visible, and a resubmission runs them",
            '    echo "error: the requeue failed; lines ${LINE:-$FIRST} to $((FIRST + CHUNK - 1)) of $COMMANDS are not '
            'all finished: submit the list again (finished lines are skipped)" >&2',
            "    exit 1",
            "  fi",
            "  exit 0",
            "}",
            "trap requeue USR1 TERM",
        ]
    lines += list(options.setup)
    lines += [
        "FAILED=0",
        "FIRST=$((SLURM_ARRAY_TASK_ID * CHUNK + 1))",
        "for LINE in $(seq \"$FIRST\" $((FIRST + CHUNK - 1))); do",
        '  CMD="$(sed -n "${LINE}p" "$COMMANDS")"',
        '  MARKER="$(sed -n "${LINE}p" "$DONE")"',
        '  if [ -z "$CMD" ]; then',
        '    if [ "$LINE" -eq "$FIRST" ]; then echo "no command on line $LINE of $COMMANDS" >&2; exit 1; fi',
        "    break",
        "  fi",
        '  if [ -n "$MARKER" ]; then',
        f'    PYTHONPATH={shlex.quote(os.fspath(REPO_ROOT))}"${{PYTHONPATH:+:$PYTHONPATH}}" '
        f'"${{FSNL_PYTHON:-{sys.executable}}}" -m scripts.run_identity --done "$MARKER" --cmd "$CMD"; STATE=$?',
        '    if [ "$STATE" = 0 ]; then echo "skip: $MARKER is finished"; continue; fi',
        '    if [ "$STATE" != 1 ]; then echo "line ${LINE}: $MARKER holds another run" >&2; FAILED=1; continue; fi',
        '  fi',
        '  echo "task ${SLURM_ARRAY_TASK_ID} line ${LINE} on $(hostname): $CMD"',
        '  bash -c "$CMD" &',
        "  CHILD=$!",
        '  wait "$CHILD"; RC=$?',
        "  CHILD=",
        '  if [ "$RC" -ne 0 ]; then echo "line ${LINE} failed with exit code ${RC}" >&2; FAILED=1; fi',
        "done",
        'exit "$FAILED"',
    ]
    return "\n".join(lines) + "\n"


def write_slurm(
    commands: Sequence[Command], slurm_dir: str, options: SlurmOptions, cwd: Optional[str] = None,
    pending: Optional[Sequence[int]] = None,
) -> Tuple[str, str, str]:
    """Write ``commands.txt``, ``done.txt`` and ``job.sbatch`` into ``slurm_dir``; paths are relative to
    ``cwd``. Every command of the list keeps its line (a resubmission of the same list writes the same
    files, so an array still queued runs the lines it was given); only the array tasks holding a
    ``pending`` command (positions in ``commands``; default all) are submitted, and each task skips
    its finished lines anyway."""
    workdir = Path(cwd or REPO_ROOT)
    out = Path(slurm_dir)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    commands_file, done_file, script = out / "commands.txt", out / "done.txt", out / "job.sbatch"
    atomic_write_text(commands_file, commands_text(commands))
    atomic_write_text(done_file, "".join(f"{c.done or ''}\n" for c in commands))
    chunk = max(1, int(options.chunk))
    tasks = sorted({i // chunk for i in pending}) if pending is not None else None
    atomic_write_text(script, slurm_script(len(commands), _rel(commands_file, workdir), _rel(done_file, workdir),
                                           _rel(out / "logs", workdir), options, tasks))
    return str(script), str(commands_file), str(done_file)


def commands_text(commands: Sequence[Command]) -> str:
    """``commands.txt``: one command per line, in list order (line i+1 = array position i)."""
    return "".join(f"{c.cmd}\n" for c in commands)


def submit_slurm(script: str, cwd: Optional[str] = None) -> str:
    """``sbatch script`` from ``cwd`` (the jobs' working directory); returns sbatch's answer."""
    workdir = cwd or os.fspath(REPO_ROOT)
    res = subprocess.run(["sbatch", os.path.abspath(script)], cwd=workdir, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"sbatch failed ({res.returncode}): {res.stderr.strip() or res.stdout.strip()}")
    return res.stdout.strip()


# ------------------------------------------------------------------------------------ CLI


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m scripts.launch", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("source", help="command list (text, one per line) or YAML with commands:; '-' = stdin")
    p.add_argument("--mode", choices=["local", "slurm"], default="local")
    p.add_argument("--cwd", default=None, help="working directory of the jobs (default: the repository root)")
    p.add_argument("--force", action="store_true", help="also run commands whose results exist")
    local = p.add_argument_group("local mode")
    local.add_argument("--workers", type=int, default=None, help="parallel jobs (default: number of GPUs, else 1)")
    local.add_argument("--gpus", default=None, help="comma-separated GPU ids (default: CUDA_VISIBLE_DEVICES / all)")
    local.add_argument("--retries", type=int, default=0,
                       help="extra attempts for a failed job (never for exit code 2: a deterministic error)")
    local.add_argument("--threads", type=int, default=None,
                       help="CPU threads per job (OMP_NUM_THREADS / MKL_NUM_THREADS; default: cores // workers)")
    local.add_argument("--log-dir", default="output/launch", help="per-job logs jobNNNN.log")
    slurm = p.add_argument_group("slurm mode")
    slurm.add_argument("--slurm-dir", default="output/slurm", help="where commands.txt / job.sbatch / logs go")
    slurm.add_argument("--job-name", default="fsnl-sweep")
    slurm.add_argument("--partition", default=None)
    slurm.add_argument("--account", default=None)
    slurm.add_argument("--gres", default=None, help=f"default {SLURM_DEFAULTS['gres']}")
    slurm.add_argument("--time", default=None, help=f"default {SLURM_DEFAULTS['time']}")
    slurm.add_argument("--cpus", type=int, default=None, help=f"default {SLURM_DEFAULTS['cpus']}")
    slurm.add_argument("--mem", default=None, help=f"default {SLURM_DEFAULTS['mem']}")
    slurm.add_argument("--chunk", type=int, default=1,
                       help="commands per array task, run one after the other (many short runs, one task)")
    slurm.add_argument("--requeue", action="store_true",
                       help="on preemption / near the time limit: stop the command (SIGTERM) and requeue the task")
    slurm.add_argument("--max-parallel", type=int, default=32, help="array throttle %%M")
    slurm.add_argument("--setup", action="append", default=[],
                       help="shell line run before each task's command (e.g. 'source .venv/bin/activate')")
    slurm.add_argument("--sbatch-arg", action="append", default=[], help="extra '#SBATCH' option, e.g. --qos=high")
    slurm.add_argument("--no-submit", action="store_true", help="write the files but do not call sbatch")
    return p


def _check_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Counts that make no sense (they were silently clamped, or written into the sbatch script)."""
    for name, low in (("workers", 0), ("threads", 0), ("retries", 0), ("cpus", 1), ("chunk", 1),
                      ("max_parallel", 1)):
        value = getattr(args, name)
        if value is not None and value < low:
            parser.error(f"--{name.replace('_', '-')} {value}: must be >= {low}")
    if args.threads is not None:  # each job's OpenMP pool died allocating more than the cores
        try:
            check_cpu_option(args.threads)
        except ValueError as err:
            parser.error(str(err))


def _check_dirs(args: argparse.Namespace, commands: Sequence[Command]) -> None:
    """The jobs' working directory and the folder the launch writes, before any job runs (a bad --cwd
    failed every job without a word, a file as --log-dir was a traceback). In SLURM mode a folder that
    holds another command list's files is refused (a queued array would run the new lines), unless
    ``--force``. Raises WriteError / ValueError in one line."""
    if args.cwd is not None and not osp.isdir(args.cwd):
        raise ValueError(f"--cwd {args.cwd} is not a directory (the jobs' working directory)")
    if args.mode == "local":
        check_writable_dir(args.log_dir, "log directory", create=False)
        return
    check_writable_dir(args.slurm_dir, "SLURM directory", create=False)
    folder = Path(args.slurm_dir)
    for name, is_dir in (("commands.txt", False), ("done.txt", False), ("job.sbatch", False), ("logs", True)):
        path = folder / name
        if os.path.lexists(path) and (path.is_symlink() or path.is_dir() != is_dir):
            raise ValueError(f"{path} is in the way of the launch's own {'folder' if is_dir else 'file'}; "
                             "move it away or use another --slurm-dir")
    old, script = folder / "commands.txt", folder / "job.sbatch"
    ours = old.is_file() and (not script.exists() or SCRIPT_MARK in script.read_text(encoding="utf-8", errors="replace"))
    if (old.exists() or script.exists() or (folder / "done.txt").exists()) and not ours:
        raise ValueError(f"{args.slurm_dir} holds files this launcher did not write (job.sbatch, done.txt); move "
                         "them away or use another --slurm-dir")
    if ours and old.read_text(encoding="utf-8") != commands_text(commands):
        raise ValueError(f"{args.slurm_dir} holds the files of another command list ({old}); an array job of it "
                         "may still be queued and would run the new lines. Use another --slurm-dir, or remove "
                         "those files once no array of them is queued")


def main(argv: Optional[List[str]] = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _check_args(args, parser)
    console_logging(logger.name)
    try:
        commands = read_commands(args.source)
        if commands:
            _check_dirs(args, commands)
        try:
            check_outputs(commands, args.cwd)
        except ValueError as err:
            raise ValueError(f"{_source_name(args.source)}: {err}") from None
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not commands:
        print("nothing to run: the command list is empty", file=sys.stderr)
        return 0

    if args.mode == "slurm":
        try:
            pending, done = split_done(commands, args.force, args.cwd)
        except RunConflict as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        skipped = len(done)
        listed = list(commands)
        if args.force:  # the tasks must not skip (or refuse) what --force asked to overwrite
            listed = [replace(c, done=None) for c in commands]
        pending_at = [c.index for c in pending]  # a command's index is its position in the list
        if not pending:
            print(f"all {len(commands)} command(s) are done; nothing to submit", file=sys.stderr)
            return 0
        resources = {}
        for key, default in SLURM_DEFAULTS.items():
            value = getattr(args, key)
            if value is None:
                value = default
                print(f"slurm: --{key} not given, using the default {default}", file=sys.stderr)
            resources[key] = value
        options = SlurmOptions(
            job_name=args.job_name, partition=args.partition, gres=resources["gres"] or None,
            time=resources["time"], cpus=int(resources["cpus"]), mem=resources["mem"],
            max_parallel=args.max_parallel, account=args.account, setup=args.setup, extra=args.sbatch_arg,
            chunk=max(1, args.chunk), requeue=args.requeue, overwrite=args.force,
        )
        script, _, _ = write_slurm(listed, args.slurm_dir, options, args.cwd, pending_at)
        tasks = len({i // options.chunk for i in pending_at})
        print(f"{tasks} array task(s) for {len(pending)} command(s) ({skipped} already done) in {script}",
              file=sys.stderr)
        if args.no_submit:
            print(f"submit with: cd {args.cwd or REPO_ROOT} && sbatch {os.path.abspath(script)}", file=sys.stderr)
            return 0
        try:
            print(submit_slurm(script, args.cwd))
        except FileNotFoundError:
            print("error: sbatch not found; submit the script by hand on the cluster's login node", file=sys.stderr)
            return 2
        except RuntimeError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        return 0

    gpus = visible_gpus(args.gpus)
    workers = args.workers or max(1, len(gpus))
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if on_main_thread else None
    try:
        summary = run_local(commands, workers, gpus, args.retries, args.log_dir, args.cwd, args.force, args.threads)
    except RunConflict as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Terminated:
        print("terminated (SIGTERM); running jobs were stopped; rerun the launch to continue", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("interrupted; running jobs were terminated", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    print(f"launch: {summary.line()} ({summary.workers} worker(s), GPUs: {','.join(gpus) or 'none'})", file=sys.stderr)
    for c, reason, log in summary.failed:
        print(f"  FAILED job {c.index} ({reason}, log {log}): {c.cmd}", file=sys.stderr)
        if summary.error_lines.get(c.index):
            print(f"    {summary.error_lines[c.index]}", file=sys.stderr)
    return exit_status([summary.exit_codes.get(c.index) for c, _, _ in summary.failed])


if __name__ == "__main__":
    sys.exit(main())
