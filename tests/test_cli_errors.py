"""The real project packages behind train.py: user mistakes are one line, not a traceback."""
from __future__ import annotations


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
