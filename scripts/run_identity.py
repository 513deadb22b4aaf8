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
"""
from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run by path (python dir/script.py): the repo root goes first on sys.path, as under -m
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import os
import os.path as osp
import shlex
from typing import Any, Dict, List, Optional, Sequence

import train
from configs import ConfigError
from dassl import results
from dassl.cli import ArgumentParser
from dassl.engine import expected_fingerprint
from dassl.utils.registry import RegistryKeyError
from lpclip import feat_extractor, linear_probe
from lpclip.files import feature_file
from scripts.domains import REPO_ROOT

__all__ = ["RunConflict", "command_fingerprint", "command_state", "conflict_message", "extraction_state"]

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
    return path if not path or osp.isabs(path) else osp.normpath(osp.join(cwd, path))


def _is_train(argv: Sequence[str]) -> bool:
    return len(argv) >= 2 and osp.basename(argv[1]) == "train.py"


def _module(argv: Sequence[str]) -> str:
    return argv[2] if len(argv) >= 3 and argv[1] == "-m" else ""


def command_fingerprint(argv: Sequence[str], cwd: Optional[str] = None) -> Optional[Dict[str, Any]]:
    """The fingerprint the command ``argv`` (run in ``cwd``) will record, or None for a command that
    writes no results.json. Raises ``ConfigError``/``ValueError`` when the command's config is wrong and
    ``MissingFeaturesError`` for a probe whose features are not extracted yet."""
    workdir = cwd or os.fspath(REPO_ROOT)
    if _is_train(argv):
        args = train.parse_args(list(argv[2:]))
        for name in _PATH_OPTIONS:
            value = getattr(args, name, None)
            if isinstance(value, str):
                setattr(args, name, _abs(value, workdir))
        opts = list(args.opts or [])
        for i in range(0, len(opts) - 1, 2):
            if opts[i] == "MODEL.BACKBONE.WEIGHTS" and osp.exists(osp.join(workdir, opts[i + 1])):
                opts[i + 1] = _abs(opts[i + 1], workdir)
        args.opts = opts
        model_dir = args.model_dir if args.eval_only else ""
        return expected_fingerprint(train.setup_cfg(args), model_dir=model_dir, load_epoch=args.load_epoch)
    if _module(argv) == "lpclip.linear_probe":
        a = linear_probe.parse_args(list(argv[3:]))
        return linear_probe.probe_fingerprint(_abs(a.feature_dir, workdir), a.dataset, a.sub_classes, a.shots,
                                              a.num_run, a.num_step, a.normalized, a.solver)
    return None


#: ``lpclip.feat_extractor`` options whose value is a path.
_EXTRACTOR_PATHS = ("root", "output_dir", "config_file", "dataset_config_file")


def extraction_state(argv: Sequence[str], cwd: Optional[str] = None) -> results.Finished:
    """``results.Finished`` of a feature-extractor command: ``match`` when every file it would write
    exists with the job identity it would record, ``missing`` when one does not exist (or its identity
    cannot be known: unseeded random weights), ``mismatch`` / ``unreadable`` when a file of another
    job, or a broken file, is in the way. Raises like :func:`command_fingerprint` for a bad config."""
    workdir = cwd or os.fspath(REPO_ROOT)
    args = feat_extractor.parse_args(list(argv[3:]))
    for name in _EXTRACTOR_PATHS:
        value = getattr(args, name, "")
        if value:
            setattr(args, name, _abs(value, workdir))
    cfg = feat_extractor.config_from_args(args)
    state = results.Finished("missing", "")
    for split in args.split:
        path = feature_file(args.output_dir, str(cfg.DATASET.NAME), str(cfg.DATASET.SUB_CLASSES), split)
        state = feat_extractor.feature_file_state(path, cfg, split, args.views, args.precision)
        if not state.done:
            return state
    return state


def command_state(argv: Sequence[str], done: str, cwd: Optional[str] = None,
                  match_code: bool = False) -> results.Finished:
    """``results.Finished`` of one job: ``match`` (skip it), ``missing`` (run it), ``mismatch`` or
    ``unreadable`` (a different run is in the way: never reused silently)."""
    workdir = cwd or os.fspath(REPO_ROOT)
    marker = _abs(done, workdir)
    if _module(argv) == "lpclip.feat_extractor":
        try:
            return extraction_state(argv, workdir)
        except SystemExit:
            return results.Finished("unreadable", marker, ["the job's command line does not parse"])
        except (ConfigError, RegistryKeyError, ValueError, OSError) as err:
            return results.Finished("unreadable", marker, [f"cannot compute the job's identity: {err}"])
    if osp.basename(marker) != results.RESULTS_FILE:
        return results.Finished("match" if osp.isfile(marker) else "missing", marker)
    if not osp.isfile(marker):
        return results.Finished("missing", marker)
    try:
        expected = command_fingerprint(argv, workdir)
    except linear_probe.MissingFeaturesError:
        return results.Finished("missing", marker)  # the probe reruns on the features the sweep extracts
    except SystemExit:
        return results.Finished("unreadable", marker, ["the job's command line does not parse"])
    except (ConfigError, RegistryKeyError, ValueError, OSError) as err:
        return results.Finished("unreadable", marker, [f"cannot compute the job's fingerprint: {err}"])
    if expected is None:
        try:
            results.read_results(marker)
        except results.ResultsError as err:
            return results.Finished("unreadable", marker, [str(err)])
        return results.Finished("match", marker)
    return results.find_finished(osp.dirname(marker), expected, match_code=match_code)


def conflict_message(states: Sequence[results.Finished]) -> str:
    """One line for all conflicting jobs: how many, the first one's differing keys, and the fixes."""
    bad: List[results.Finished] = [s for s in states if s.state in ("mismatch", "unreadable")]
    first = bad[0]
    which = "" if len(bad) == 1 else "the first, "
    return (f"{len(bad)} job(s) would overwrite a different finished run: {which}{first.path} differs in: "
            f"{'; '.join(first.differences)}. Fix: use another --out, or --force to overwrite")


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m scripts.run_identity",
                       description="exit 0 when DONE holds a finished run of CMD's fingerprint (skip it), "
                                   "1 when there is none (run it), 2 when a different run is in the way")
    p.add_argument("--done", required=True, help="the job's marker (its results.json)")
    p.add_argument("--cmd", required=True, help="the job's command line, one string")
    p.add_argument("--match-code", action="store_true", help="also require the same code version")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """What the SLURM array tasks of ``scripts.launch`` run before their command."""
    args = _parser().parse_args(argv)
    state = command_state(shlex.split(args.cmd), args.done, os.getcwd(), args.match_code)
    if state.done:
        print(f"skip: {state.line()}")
        return 0
    if state.state == "missing":
        return 1
    print(f"error: {conflict_message([state])}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
