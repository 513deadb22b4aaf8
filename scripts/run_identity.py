"""Skip decisions of ``scripts.sweep`` and ``scripts.launch``: a job is done only when its output
directory holds a finished run with the fingerprint the job's command would record.

"It exists on disk" is not identity: a results.json written by another ``--config``, other
``--opts``, other weights or another split file is never taken for this job's result. The expected
fingerprint is computed from the job's own command line by the code ``train.py`` runs on it
(``train.parse_args`` → ``train.setup_cfg`` → ``configs.build_cfg``) and the trainer's
``identity_parts`` (``dassl.engine.expected_fingerprint``), without building a trainer or loading any
data or model. Linear-probe commands get ``lpclip.linear_probe.probe_fingerprint``. Feature-extractor
commands write no results.json: each feature file they would write must exist and carry the job
identity the command computes (``lpclip.feat_extractor.job_identity``), so a file extracted with
another config, backbone or split file is never taken for theirs.

The comparison covers the fingerprint ``id`` (trainer, semantic config, split digests, weights); the
few-shot digest is implied by those and is not recomputed here (it would need sampling); the code
version is compared only with ``match_code`` (see ``dassl.results``).

A command is read as the shell would run it (:func:`invocation`): ``NAME=VALUE`` assignments and
``env`` before the interpreter, any ``python*`` executable, its options (``-u``, ``-X dev``, ...), then
``-m <module>`` or a script path (``train.py``, ``lpclip/linear_probe.py``, ``lpclip/feat_extractor.py``,
relative to the job's directory or absolute). Before, only ``python train.py`` and ``python -m lpclip...``
were read; ``OMP_NUM_THREADS=1 python train.py ... OPTIM.LR 0.5`` was skipped on the strength of a
results.json of another learning rate.
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
import io
import os
import os.path as osp
import re
import shlex
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import train
from configs import ConfigError
from dassl import results
from dassl.cli import ArgumentParser
from dassl.ctrl_c import exit_with
from dassl.engine import expected_fingerprint
from dassl.utils import WriteError, absolute_path
from dassl.utils.registry import RegistryKeyError
from lpclip import feat_extractor, linear_probe
from lpclip.files import feature_file
from scripts.domains import REPO_ROOT

__all__ = ["CONFLICTS", "Invocation", "RunConflict", "check_command", "command_argv", "command_fingerprint", "command_outputs", "command_state", "conflict_message",
           "extraction_state", "invocation"]

#: ``train.py`` options whose value is a path (resolved against the job's working directory).
_PATH_OPTIONS = ("root", "output_dir", "config_file", "dataset_config_file", "resume", "model_dir")


#: A job's exit code for a deterministic error (a config or data mistake: one ``error:`` line); it would
#: fail again, so launchers do not retry it, and a launcher whose failures were all such exits with it too.
DETERMINISTIC_EXIT = 2


def exit_status(failed_codes: Sequence[Optional[int]]) -> int:
    """A launcher's exit status from its failed jobs' exit codes (None: did not start or wrote nothing):
    0 without failures, :data:`DETERMINISTIC_EXIT` when every failure was one, else 1."""
    if not failed_codes:
        return 0
    return DETERMINISTIC_EXIT if all(c == DETERMINISTIC_EXIT for c in failed_codes) else 1


class RunConflict(ValueError):
    """Finished runs that differ from what the jobs would compute (message: one line)."""


def _abs(path: str, cwd: str) -> str:
    """``path`` of a command run in ``cwd``, absolute as the kernel reads it (``lnk/../x``: see
    :func:`dassl.utils.absolute_path`)."""
    return path if not path else absolute_path(osp.join(cwd, path))


#: A shell variable assignment before the command (``OMP_NUM_THREADS=1 python ...``).
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
#: Interpreter options without an argument; a token of any of them (``-u``, ``-OO``, ``-bb``, ``-uB``).
_FLAG_LETTERS = frozenset("uOBsSEIqvb")
#: Interpreter options with one argument, apart (``-X dev``) or joined (``-Xdev``).
_VALUE_OPTIONS = ("-X", "-W")
#: The entry points the skip check reads, by module (``-m``) and by the tail of a script path.
_MODULES = (("train", "train"), ("lpclip.linear_probe", "probe"), ("lpclip.feat_extractor", "extract"))
_SCRIPTS = ((("train.py",), "train"), (("lpclip", "linear_probe.py"), "probe"),
            (("lpclip", "feat_extractor.py"), "extract"))


@dataclass(frozen=True)
class Invocation:
    """What a command line runs, as far as the skip check is concerned: ``entry`` is ``train``,
    ``probe``, ``extract`` or ``""`` (any other command: no identity can be computed for it), ``args``
    the entry point's own arguments, ``env`` the ``NAME=VALUE`` assignments before the interpreter."""

    entry: str
    args: Tuple[str, ...] = ()
    env: Dict[str, str] = field(default_factory=dict)

    def asks_overwrite(self) -> bool:
        """``FSNL_OVERWRITE=1`` before the command or in the environment it runs in (what ``--force`` of
        the launchers sets for every job) or its own ``--overwrite``: the command replaces a run of another configuration in its folder
        instead of refusing it, so that run is no conflict of the launch."""
        # the command's own assignment wins; else the environment it inherits (a shell wrapper's, a launcher's)
        value = self.env.get(results.OVERWRITE_ENV, os.environ.get(results.OVERWRITE_ENV))
        return "--overwrite" in self.args or results.overwrite_value(value)


def command_argv(cmd: str) -> List[str]:
    """The words of a command line as the shell splits them, without a trailing ``# comment`` (the shell
    that runs the line ignores it; read as words it became config items and a rerun of a finished line
    was refused). As in bash, ``#`` starts a comment only at the start of a word outside quotes
    (``a#b`` and ``x\\ #y`` are one word). Raises ValueError for a line the shell cannot parse."""
    quote, i, word_start = "", 0, True
    while i < len(cmd):
        ch = cmd[i]
        if ch == "\\" and quote != "'":
            i, word_start = i + 2, False  # the next character is escaped (inside double quotes too)
            continue
        if quote:
            quote = "" if ch == quote else quote
        elif ch == "#" and word_start:
            return shlex.split(cmd[:i])
        elif ch in "'\"":
            quote = ch
        word_start = not quote and ch.isspace()
        i += 1
    return shlex.split(cmd)


def _assignments(tokens: Sequence[str], i: int, env: Dict[str, str]) -> int:
    while i < len(tokens) and _ASSIGNMENT.match(tokens[i]):
        name, value = tokens[i].split("=", 1)
        env[name] = value
        i += 1
    return i


def invocation(argv: Sequence[str], cwd: Optional[str] = None) -> Invocation:
    """Which entry point ``argv`` (run in ``cwd``) runs: after ``NAME=VALUE`` assignments (also after
    ``env``), an interpreter whose name starts with ``python`` (``python3``, ``/usr/bin/python3.11``, a
    venv's), its options (:data:`_FLAG_LETTERS`, ``-X``/``-W`` with their value), then ``-m <module>``
    or a script whose path ends in ``train.py``, ``lpclip/linear_probe.py`` or
    ``lpclip/feat_extractor.py``. Everything else (``bash x.sh``, ``cd d && python ...``, ``python -c``,
    an interpreter option not listed) is ``entry ""``: its identity is unknown, never guessed."""
    workdir = cwd or os.fspath(REPO_ROOT)
    tokens = list(argv)
    env: Dict[str, str] = {}
    i = _assignments(tokens, 0, env)
    if i < len(tokens) and osp.basename(tokens[i]) == "env":  # env, /usr/bin/env
        i = _assignments(tokens, i + 1, env)
    if i >= len(tokens) or not osp.basename(tokens[i]).startswith("python"):
        return Invocation("", env=env)
    i += 1
    while i < len(tokens):
        tok = tokens[i]
        if tok in _VALUE_OPTIONS:
            i += 2
        elif tok[:2] in _VALUE_OPTIONS or (len(tok) > 1 and tok[0] == "-" and set(tok[1:]) <= _FLAG_LETTERS):
            i += 1
        elif tok == "-m" and i + 1 < len(tokens):
            return _entry_point(dict(_MODULES).get(tokens[i + 1], ""), tokens[i + 2:], env)
        elif tok.startswith("-m") and len(tok) > 2:  # -mlpclip.linear_probe, as python accepts it
            return _entry_point(dict(_MODULES).get(tok[2:], ""), tokens[i + 1:], env)
        elif tok.startswith("-") or not tok:  # -c CODE, - (stdin), an option we do not know
            return Invocation("", env=env)
        else:
            parts = Path(osp.normpath(_abs(tok, workdir))).parts
            entry = next((entry for tail, entry in _SCRIPTS if parts[-len(tail):] == tail), "")
            return _entry_point(entry, tokens[i + 1:], env)
    return Invocation("", env=env)


def _entry_point(entry: str, args: Sequence[str], env: Dict[str, str]) -> Invocation:
    return Invocation(entry, tuple(args) if entry else (), env)


def command_fingerprint(argv: Sequence[str], cwd: Optional[str] = None) -> Optional[Dict[str, Any]]:
    """The fingerprint the command ``argv`` (run in ``cwd``) will record, or None for a command that
    writes no results.json or that :func:`invocation` cannot read. Raises ``ConfigError``/``ValueError``
    when the command's config is wrong and ``MissingFeaturesError`` for a probe whose features are not
    extracted yet."""
    workdir = cwd or os.fspath(REPO_ROOT)
    inv = invocation(argv, workdir)
    if inv.entry == "train":
        args = _train_args(inv.args, workdir)
        model_dir = args.model_dir if args.eval_only else ""
        cfg = train.setup_cfg(args)
        return expected_fingerprint(cfg, model_dir=model_dir, load_epoch=args.load_epoch,
                                    identity_cfg=_weights_resolved(cfg, workdir))
    if inv.entry == "probe":
        a = linear_probe.parse_args(list(inv.args))
        return linear_probe.probe_fingerprint(_abs(a.feature_dir, workdir), a.dataset, a.sub_classes, a.shots,
                                              a.num_run, a.num_step, a.normalized, a.solver)
    return None


def check_command(argv: Sequence[str], cwd: Optional[str] = None) -> None:
    """Raise what ``train.py`` would stop on before its first step (``train.validate_cfg``: names and
    values of the config, the backbone and its weights) for a ``train.py`` command; other commands
    pass. A sweep calls it for every job before it starts one, so ``--opts OPTIM.WEIGHT_DECAY -1`` is
    one line, not the same failure once per job (each after seconds of imports)."""
    workdir = cwd or os.fspath(REPO_ROOT)
    inv = invocation(argv, workdir)
    if inv.entry != "train":
        return
    args = _train_args(inv.args, workdir)
    train.validate_cfg(train.setup_cfg(args), training=not (args.eval_only or args.no_train))


def _train_args(args: Sequence[str], workdir: str) -> argparse.Namespace:
    """``train.py``'s parsed options with their paths resolved against the job's directory."""
    parsed = train.parse_args(list(args))
    for name in _PATH_OPTIONS:
        value = getattr(parsed, name, None)
        if isinstance(value, str):
            setattr(parsed, name, _abs(value, workdir))
    return parsed


def _weights_resolved(cfg: Any, workdir: str) -> Any:
    """``cfg`` with a relative ``MODEL.BACKBONE.WEIGHTS`` file made absolute against the job's
    directory, for hashing the file; None when there is nothing to resolve. The job records the path
    as written (``--opts`` or its config file), so the fingerprint's config keeps it that way: the
    weights' identity is their content, never the path string."""
    weights = str(cfg.MODEL.BACKBONE.get("WEIGHTS", "") or "")
    if not weights or osp.isabs(weights) or not osp.exists(osp.join(workdir, weights)):
        return None
    resolved = cfg.clone()
    resolved.defrost()
    resolved.MODEL.BACKBONE.WEIGHTS = _abs(weights, workdir)
    resolved.freeze()
    return resolved


#: ``lpclip.feat_extractor`` options whose value is a path.
_EXTRACTOR_PATHS = ("root", "output_dir", "config_file", "dataset_config_file")


def _extractor_files(args: Sequence[str], workdir: str) -> Tuple[argparse.Namespace, Any, List[Tuple[str, str]]]:
    """An extractor command's options, config and ``(split, feature file)`` of each file it writes."""
    parsed = feat_extractor.parse_args(list(args))
    for name in _EXTRACTOR_PATHS:
        value = getattr(parsed, name, "")
        if value:
            setattr(parsed, name, _abs(value, workdir))
    cfg = feat_extractor.config_from_args(parsed)
    files = [(split, feature_file(parsed.output_dir, str(cfg.DATASET.NAME), str(cfg.DATASET.SUB_CLASSES), split))
             for split in parsed.split]
    return parsed, cfg, files


def extraction_state(argv: Sequence[str], cwd: Optional[str] = None) -> results.Finished:
    """``results.Finished`` of a feature-extractor command: ``match`` when every file it would write
    exists with the job identity it would record, ``missing`` when one does not exist (or its identity
    cannot be known: unseeded random weights), ``mismatch`` / ``unreadable`` when a file of another
    job, or a broken file, is in the way. Raises like :func:`command_fingerprint` for a bad config."""
    workdir = cwd or os.fspath(REPO_ROOT)
    inv = invocation(argv, workdir)
    args, cfg, files = _extractor_files(inv.args, workdir)
    state = results.Finished("missing", "")
    for split, path in files:
        state = feat_extractor.feature_file_state(path, cfg, split, args.views, args.precision)
        if not state.done:
            return state
    return state


def command_outputs(argv: Sequence[str], cwd: Optional[str] = None) -> Tuple[str, ...]:
    """Where a command :func:`invocation` reads writes its results (absolute, symlinks resolved):
    ``train.py``'s and the probe's output directory, the extractor's feature files. Two jobs of one
    launch with a path in common would run side by side and one result would be lost. ``()`` for any
    other command, and for one whose line or config is wrong (the skip check, or the job, reports it:
    argparse's own error line is kept off the console here)."""
    workdir = cwd or os.fspath(REPO_ROOT)
    inv = invocation(argv, workdir)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            if inv.entry == "train":
                args = _train_args(inv.args, workdir)
                out = args.output_dir
                # without --output-dir: a config's OUTPUT_DIR or an override of it (both given and
                # different is the job's own error)
                if not out or "OUTPUT_DIR" in (args.opts or [])[::2]:
                    out = str(train.setup_cfg(args).OUTPUT_DIR)
                paths = [out]
            elif inv.entry == "probe":
                a = linear_probe.parse_args(list(inv.args))
                # the probe's default, as lpclip.linear_probe.main computes it
                paths = [a.output_dir or osp.join(a.feature_dir, a.dataset, a.sub_classes, "linear_probe")]
            elif inv.entry == "extract":
                paths = [path for _, path in _extractor_files(inv.args, workdir)[2]]
            else:
                paths = []
    except (SystemExit, ConfigError, RegistryKeyError, ValueError, OSError):
        return ()
    return tuple(osp.realpath(_abs(path, workdir)) for path in paths if path)


#: The states of :func:`command_state` that stop a launch before any job runs: a different run in the
#: way (``mismatch``), a results.json that cannot be read (``unreadable``), and a job whose own command
#: cannot run (``invalid``: it does not parse, or its config is wrong), whose folder is not judged.
CONFLICTS = ("mismatch", "unreadable", "invalid")


@contextlib.contextmanager
def _parse_messages() -> Iterator[io.StringIO]:
    """Collect what an entry point's argument parser writes to stderr, for one line of its own: it wrote
    its ``error:`` line, and then the launch wrote a second one blaming the results.json in the way."""
    buffer = io.StringIO()
    with contextlib.redirect_stderr(buffer):
        yield buffer


def _invalid(marker: str, messages: io.StringIO) -> results.Finished:
    lines = [ln.strip() for ln in messages.getvalue().splitlines() if ln.strip()]
    why = lines[-1].removeprefix("error: ") if lines else "it does not parse"
    why = re.sub(r"; see \S.* --help$", "", why)  # the parser's pointer names this process, not the job
    return results.Finished("invalid", marker, [f"the job's command line does not parse: {why}"])


def command_state(argv: Sequence[str], done: str, cwd: Optional[str] = None,
                  match_code: bool = False) -> results.Finished:
    """``results.Finished`` of one job: ``match`` (skip it), ``missing`` (run it), ``mismatch`` or
    ``unreadable`` (a different run is in the way: never reused silently).

    Only a fingerprint match skips a ``results.json`` marker. A command :func:`invocation` cannot read
    (a shell script, ``cd d && python train.py``) has no fingerprint here, so its results.json proves
    nothing about *this* configuration: it is ``missing`` and runs (``train.py`` and ``lpclip`` refuse
    another configuration's folder themselves; before, any results.json there skipped it). A marker
    that is not a results.json (an explicit ``done:`` of a launch list) is the user's own "this file
    marks it done": it counts by existence, as ``scripts.launch`` documents. A command that asks to
    overwrite (:meth:`Invocation.asks_overwrite`) is not refused for another configuration's run in its
    folder, which it replaces as asked; a run of its own fingerprint is still skipped."""
    workdir = cwd or os.fspath(REPO_ROOT)
    marker = _abs(done, workdir)
    inv = invocation(argv, workdir)
    if inv.entry:
        try:  # a switch the job would refuse (FSNL_OVERWRITE=2): refused here, before any job of a launch runs
            inv.asks_overwrite()
        except WriteError as err:
            return results.Finished("invalid", marker, [str(err)])
    if inv.entry == "extract":
        try:
            with _parse_messages() as messages:
                state = extraction_state(argv, workdir)
        except SystemExit:
            return _invalid(marker, messages)
        except (ConfigError, RegistryKeyError, ValueError, OSError) as err:
            return results.Finished("invalid", marker, [f"cannot compute the job's identity: {err}"])
        return _unless_overwriting(state, inv)
    if osp.basename(marker) != results.RESULTS_FILE:
        return results.Finished("match" if osp.isfile(marker) else "missing", marker)
    if not osp.isfile(marker) or inv.entry not in ("train", "probe"):
        return results.Finished("missing", marker)
    try:
        with _parse_messages() as messages:
            expected = command_fingerprint(argv, workdir)
    except linear_probe.MissingFeaturesError:
        return results.Finished("missing", marker)  # the probe reruns on the features the sweep extracts
    except SystemExit:
        return _invalid(marker, messages)
    except (ConfigError, RegistryKeyError, ValueError, OSError) as err:
        return results.Finished("invalid", marker, [f"cannot compute the job's fingerprint: {err}"])
    if expected is None:  # not reached: train and probe commands record one
        return results.Finished("missing", marker)
    return _unless_overwriting(results.find_finished(osp.dirname(marker), expected, match_code=match_code), inv)


def _unless_overwriting(state: results.Finished, inv: Invocation) -> results.Finished:
    """A different run in the way is no conflict for a command that asks to overwrite it: it runs."""
    if state.state == "mismatch" and inv.asks_overwrite():
        return results.Finished("missing", state.path, state.differences)
    return state


def conflict_message(states: Sequence[results.Finished], elsewhere: str = "use another --out",
                     force: str = "--force") -> str:
    """One line for all conflicting jobs: how many, the first one's differing keys, and the fixes
    (``elsewhere``: how the caller's user puts the jobs somewhere else; ``force``: how they overwrite)."""
    invalid = [s for s in states if s.state == "invalid"]
    if invalid:  # the job's own mistake: its folder is not what is wrong
        which = "" if len(invalid) == 1 else "the first, "
        return (f"{len(invalid)} job(s) cannot run: {which}the one writing {invalid[0].path}: "
                f"{'; '.join(invalid[0].differences)}. Fix the command")
    bad: List[results.Finished] = [s for s in states if s.state in CONFLICTS]
    first = bad[0]
    which = "" if len(bad) == 1 else "the first, "
    if first.state == "unreadable":  # a damaged results.json
        why = "; ".join(first.differences)
        where = why if first.path in why else f"{first.path}: {why}"
        return (f"{len(bad)} job(s) would overwrite a finished run that cannot be checked: {which}{where}. "
                f"Fix: move it away or repair it, {elsewhere}, or {force} to overwrite")
    return (f"{len(bad)} job(s) would overwrite a different {first.what}: {which}{first.path} differs in: "
            f"{'; '.join(first.differences)}. Fix: {elsewhere}, or {force} to overwrite")


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m scripts.run_identity",
                       description="exit 0 when DONE holds a finished run of CMD's fingerprint (skip it), "
                                   "1 when there is none (run it), 2 when a different run is in the way")
    p.add_argument("--done", required=True, help="the job's marker (its results.json)")
    p.add_argument("--cmd", help="the job's command line, one string (or its words after --)")
    p.add_argument("--match-code", action="store_true", help="also require the same code version")
    p.add_argument("--elsewhere", default="give the command another output directory",
                   help="the conflict message's first fix")
    p.add_argument("--force-hint", default="--force", help="how the caller overwrites, for the conflict message")
    p.add_argument("words", nargs="*", help="the job's command, one argument per word (after --)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """What the SLURM array tasks of ``scripts.launch`` run before their command."""
    parser = _parser()
    args = parser.parse_args(argv)
    if (args.cmd is None) == (not args.words):
        parser.error("give the job's command as --cmd 'LINE' or as its words after --, one of the two")
    # Words as the shell passed them: a line quoted by bash's printf %q ($'...' for a non-ASCII or
    # control character under LC_ALL=C) is not what shlex reads, and a finished run was refused.
    if osp.isdir(args.done):  # it read as "no marker": run it, over the finished run in that folder
        print(f"error: --done {args.done} is a directory; give the job's results.json in it", file=sys.stderr)
        return 2
    try:
        words = list(args.words) if args.words else command_argv(args.cmd)
    except ValueError as err:  # a traceback's exit 1 read as "run it"
        print(f"error: --cmd is not a complete shell command ({str(err).lower()}); check its quoting",
              file=sys.stderr)
        return 2
    state = command_state(words, args.done, os.getcwd(), args.match_code)
    if state.done:
        print(f"skip: {state.line()}")
        return 0
    if state.state in ("missing", "invalid"):  # an invalid command says what is wrong with it itself, once
        return 1
    print(f"error: {conflict_message([state], args.elsewhere, args.force_hint)}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    exit_with(main)
