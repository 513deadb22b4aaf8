"""scripts.plot_curves: PNG + PDF from a results directory or from parse_test_res's JSON."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from scripts import parse_test_res, plot_curves

DPI = 150  # plot_curves saves PNGs at 150 dpi, 3.4 x 2.9 inches per panel plus a legend strip


def assert_grid(size: tuple[int, int], ncols: int, nrows: int) -> None:
    width, height = size
    assert width == round(ncols * 3.4 * DPI)
    legend = height - nrows * 2.9 * DPI
    assert 0.3 * DPI < legend < 1.5 * DPI  # the panels keep their size; the legend gets a strip below


def put(root: Path, rel: str, payload: dict) -> None:
    path = root / rel / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "out"
    for d_i, dataset in enumerate(("Animals92_42", "Food53_27", "Pokemon89_39")):
        for k in (1, 2, 4):
            for seed in (1, 2):
                put(root, f"{dataset}/shots_{k}/train/CoOp_openclip/CSC_False/cfg/seed{seed}",
                    {"sub_classes": "OOP", "oop": 30.0 + 3 * k + seed + d_i, "ip": 30.0})
                put(root, f"{dataset}/shots_{k}/train/FSNL_openclip_USE_CAPTION_True/MEPOCH_200_BS_4_LR_1e-05/seed{seed}",
                    {"sub_classes": "OOP", "oop": 50.0 + 5 * k + seed, "ip": 30.0})
        put(root, f"{dataset}/ZeroshotCLIP_openclip/ZS_OOP/seed3", {"sub_classes": "OOP", "oop": 20.0, "ip": 40.0})
    return root


def png_size(path: str) -> tuple[int, int]:
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        return im.size


def test_plot_from_directory(tree: Path, tmp_path: Path) -> None:
    base = tmp_path / "fig" / "curves"
    assert plot_curves.main([str(tree), "--out", str(base), "--band"]) == 0
    png, pdf = Path(f"{base}.png"), Path(f"{base}.pdf")
    assert png.stat().st_size > 10_000
    assert pdf.read_bytes()[:5] == b"%PDF-"
    # Three domains -> a 2x2 grid (ceil(sqrt(3)) columns), the fourth panel hidden.
    assert_grid(png_size(str(png)), ncols=2, nrows=2)


def test_plot_from_json_with_domain_filter(tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    table_json = tmp_path / "table.json"
    assert parse_test_res.main([str(tree), "--curves", "--json", str(table_json)]) == 0
    capsys.readouterr()
    groups = plot_curves.load_groups(str(table_json))
    assert {g.dataset for g in groups} == {"Animals92_42", "Food53_27", "Pokemon89_39"}
    png, pdf = plot_curves.plot_curves(groups, str(tmp_path / "two.png"), domains=["Food", "Pokemon89_39"])
    assert png.endswith("two.png") and Path(pdf).is_file()
    assert_grid(png_size(png), ncols=2, nrows=1)  # one row of two panels


def test_json_round_trip_matches_directory(tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    table_json = tmp_path / "all.json"
    parse_test_res.main([str(tree), "--json", str(table_json)])
    capsys.readouterr()
    from_dir = {(g.dataset, g.method, g.shots): g.oop.mean for g in plot_curves.load_groups(str(tree))}
    from_json = {(g.dataset, g.method, g.shots): g.oop.mean for g in plot_curves.load_groups(str(table_json))}
    assert from_json == pytest.approx(from_dir)
    assert from_dir[("Food53_27", "FSNL_openclip_USE_CAPTION_True", 4)] == pytest.approx(71.5)


def test_nothing_to_plot(tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A user mistake: exit code 2 (it was 1) and one line naming the source and the domains found."""
    assert plot_curves.main([str(tree), "--out", str(tmp_path / "x"), "--domains", "Landmark"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: nothing to plot") and err.count("\n") == 1, err
    assert str(tree) in err and "Animals92_42 Food53_27 Pokemon89_39" in err
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "x.pdf").exists()


def test_a_domain_without_results_among_found_ones_is_refused(tree: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    """Hostile: ``--domains Food Landmak`` (a typo beside a found domain) drew the Food panel alone and
    exited 0; the figure silently lacked a domain the command asked for. Now one line naming it."""
    out = str(tmp_path / "x")
    assert plot_curves.main([str(tree), "--out", out, "--domains", "Food"]) == 0
    before = {p.name: p.read_bytes() for p in tmp_path.glob("x.*")}
    capsys.readouterr()
    assert plot_curves.main([str(tree), "--out", out, "--domains", "Food", "Landmak"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no results for --domains Landmak in ") and err.count("\n") == 1, err
    assert "Animals92_42 Food53_27 Pokemon89_39" in err
    assert {p.name: p.read_bytes() for p in tmp_path.glob("x.*")} == before and len(before) == 2


def test_curves_follow_the_chosen_accuracy():
    """The committed Mini-Beyond comparison: IP / H curves carry exactly the groups' IP / H means, and
    the class-specific methods (TaskRes, the linear probe: no IP) get no IP or H curve."""
    payload = json.loads((Path(__file__).resolve().parents[1] / "docs/results/mini_beyond_comparison_curves.json")
                         .read_text())
    groups = parse_test_res.groups_from_json(payload)
    for metric in ("oop", "ip", "hmean"):
        curves = parse_test_res.build_curves(groups, metric)
        for c in curves["curves"]:
            expected = {g.shots: getattr(g, metric).mean for g in groups
                        if g.dataset == c["dataset"] and g.method == c["method"] and getattr(g, metric).n}
            assert {k: s.mean for k, s in c["points"]} == expected
        with_points = {c["label"] for c in curves["curves"] if c["points"]}
        assert ("TaskRes" in with_points) == (metric == "oop")
        assert "FSNL" in with_points
    with pytest.raises(ValueError, match="unknown curve metric"):
        parse_test_res.build_curves(groups, "acc")


@pytest.mark.parametrize("option, value, expected", [("--ncols", "-3", "argument --ncols: -3 panels per row"),
                                                     ("--ncols", "0", "argument --ncols: 0 panels per row"),
                                                     ("--method-depth", "-1", "argument --method-depth: -1")])
def test_a_bad_layout_option_is_one_line_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                         option: str, value: str, expected: str) -> None:
    """``--ncols -3`` was a "figure size must be positive finite" traceback after the results were read."""
    out = tmp_path / "fig"
    with pytest.raises(SystemExit) as exit_info:
        plot_curves.main([str(tmp_path), "--out", str(out), option, value])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
    assert not list(tmp_path.iterdir())
