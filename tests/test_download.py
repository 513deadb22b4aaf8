"""datasets.download with snapshot_download monkeypatched (the network is never touched)."""
from __future__ import annotations

import fnmatch
import os
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from datasets import check, download
from datasets.make_toy import make_toy

TOY_DOMAINS = {"Animals": "Animals92_42", "Food": "Food53_27"}


class FakeHub:
    """Records the calls; optionally writes a toy copy of the requested domains into local_dir."""

    def __init__(self, write: bool = True, error: Optional[Exception] = None) -> None:
        self.calls: List[Dict[str, Any]] = []
        self.write = write
        self.error = error

    def __call__(self, **kwargs: Any) -> str:
        self.calls.append(kwargs)
        if self.error is not None:
            raise self.error
        patterns = kwargs["allow_patterns"]
        # "2B/Food[0-9]*_OOP/*" -> the variant's files live under local_dir/2B
        top = patterns[0].split("/")[0] + "/" if patterns[0].count("/") == 2 else ""
        if self.write:
            wanted = [name for prefix, name in TOY_DOMAINS.items()
                      if any(fnmatch.fnmatch(f"{top}{prefix}5_OOP/x.jpg", p) for p in patterns)]
            make_toy(os.path.join(kwargs["local_dir"], top), domains=wanted, image_size=8, num_train=1,
                     num_val=1, num_test=1)
        return kwargs["local_dir"]


def test_patterns_match_the_layout() -> None:
    pats = download.allow_patterns(["Animals", "Insects_Spiders"], "400M")
    assert pats == ["Animals[0-9]*_OOP/*", "Animals[0-9]*_IP/*", "Insects_Spiders[0-9]*_OOP/*",
                    "Insects_Spiders[0-9]*_IP/*"]
    files = ["Animals92_OOP/images/aye-aye/1.jpg", "Animals42_IP/split_Xin_Animals42_IP.json",
             "AnimalsExtra_OOP/a.jpg", "Insects_Spiders106_OOP/images/a/b.jpg", "Food53_OOP/x.jpg"]
    matched = [f for f in files if any(fnmatch.fnmatch(f, p) for p in pats)]
    assert matched == ["Animals92_OOP/images/aye-aye/1.jpg", "Animals42_IP/split_Xin_Animals42_IP.json",
                       "Insects_Spiders106_OOP/images/a/b.jpg"]
    assert download.allow_patterns(["Food"], "2B") == ["2B/Food[0-9]*_OOP/*", "2B/Food[0-9]*_IP/*"]
    with pytest.raises(ValueError):
        download.allow_patterns(["Food"], "1B")


def test_domains_default_to_the_nine() -> None:
    pairs = download.resolve_domains([])
    assert len(pairs) == 9
    assert ("Plants_Fugi113_56", "Plants_Fugi") in pairs
    assert not any(name.startswith("Mini") for name, _ in pairs)
    assert download.resolve_domains(["insects", "Food53_27", "food"]) == [
        ("Insects_Spiders106_52", "Insects_Spiders"), ("Food53_27", "Food")]


def test_download_then_validate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    hub = FakeHub()
    monkeypatch.setattr(download, "snapshot_download", hub)
    checked: List[List[str]] = []
    real_main = check.main

    def spy(argv: Any = (), stream: Any = None) -> int:
        checked.append(list(argv))
        return real_main(argv, stream)

    monkeypatch.setattr(check, "main", spy)
    root = tmp_path / "lb"
    assert download.main(["--root", str(root), "--domains", "Animals", "Food"]) == 0
    (call,) = hub.calls
    assert call["repo_id"] == "MHuangX/LAION-Beyond" and call["repo_type"] == "dataset"
    assert call["local_dir"] == str(root)
    assert call["allow_patterns"] == ["Animals[0-9]*_OOP/*", "Animals[0-9]*_IP/*", "Food[0-9]*_OOP/*",
                                      "Food[0-9]*_IP/*"]
    assert checked == [["--root", str(root), "--domains", "Animals92_42", "Food53_27"]]
    out = capsys.readouterr().out
    assert f"train with --root {root}" in out and "All 2 domain(s) OK." in out


def test_variant_goes_to_its_subfolder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    hub = FakeHub()
    monkeypatch.setattr(download, "snapshot_download", hub)
    root = tmp_path / "lb"
    assert download.main(["--root", str(root), "--domains", "Food", "--variant", "2B"]) == 0
    assert hub.calls[0]["allow_patterns"] == ["2B/Food[0-9]*_OOP/*", "2B/Food[0-9]*_IP/*"]
    assert f"train with --root {root / '2B'}" in capsys.readouterr().out


def test_validation_failure_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(download, "snapshot_download", FakeHub(write=False))  # hub matched nothing
    assert download.main(["--root", str(tmp_path / "lb"), "--domains", "Food"]) != 0
    assert "Food53_27" in capsys.readouterr().out
    assert download.main(["--root", str(tmp_path / "lb"), "--domains", "Food", "--no-check"]) == 0


def test_unreachable_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from huggingface_hub.errors import LocalEntryNotFoundError

    error = LocalEntryNotFoundError("Cannot find the requested files: outgoing traffic has been disabled")
    monkeypatch.setattr(download, "snapshot_download", FakeHub(error=error))
    monkeypatch.setattr(check, "main", lambda *a, **k: pytest.fail("validation must not run after a failed download"))
    assert download.main(["--root", str(tmp_path / "lb"), "--domains", "Animals"]) == 2
    err = capsys.readouterr().err
    assert "download elsewhere and point --root at the copy" in err
    assert "LocalEntryNotFoundError" in err


def test_unknown_domain(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert download.main(["--root", str(tmp_path), "--domains", "Dinosaurs"]) == 2
    assert "unknown domain 'Dinosaurs'" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["root-file", "workers-0"])
def test_mistakes_are_one_line_before_any_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture, case: str) -> None:
    """A file as ``--root`` was a FileExistsError traceback; ``--max-workers 0`` reached the hub client."""
    monkeypatch.setattr(download, "snapshot_download", lambda **kw: pytest.fail("a download started"))
    (tmp_path / "file").write_text("mine")
    argv = {"root-file": ["--root", str(tmp_path / "file")],
            "workers-0": ["--root", str(tmp_path / "lb"), "--max-workers", "0"]}[case]
    assert download.main([*argv, "--domains", "Animals"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert {"root-file": "is a file, not a directory", "workers-0": "--max-workers 0: must be >= 1"}[case] in err[0]
    assert (tmp_path / "file").read_text() == "mine" and not (tmp_path / "lb").exists()


def test_make_toy_refuses_a_seed_numpy_cannot_take_before_writing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``--seed -1`` said "expected non-negative integer" (naming no option) and left a class folder behind."""
    from datasets import make_toy as toy

    with pytest.raises(SystemExit) as stop:
        toy.main(["--root", str(tmp_path / "toy"), "--seed", "-1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and "argument --seed: -1: must be in 0..4294967295" in err[0], err
    assert not (tmp_path / "toy").exists()
