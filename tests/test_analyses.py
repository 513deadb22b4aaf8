"""The paper's analyses: k-means clustering accuracy (Finding 1), t-SNE and zero-shot figures
(Findings 1-2), backbone scaling (Finding 3) and the shared feature helper."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dassl import results
from scripts import backbone_scaling as bbs
from scripts import cluster_eval
from scripts import plot_tsne as plot_tsne_script
from scripts.cluster_eval import kmeans_accuracy, render_markdown, write_outputs
from scripts.domains import DomainError
from scripts.plot_tsne import plot_tsne
from scripts.plot_zeroshot import plot_zeroshot, zeroshot_bars
from scripts.run_identity import command_fingerprint
from tests.helpers import trainer_config

SMOKE = trainer_config("FSNL_openclip")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def blobs(num_classes=5, per_class=30, dim=16, spread=0.05, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(num_classes, dim))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    labels = np.repeat(np.arange(num_classes), per_class)
    feats = centers[labels] + spread * rng.normal(size=(len(labels), dim))
    return (feats / np.linalg.norm(feats, axis=1, keepdims=True)).astype(np.float32), labels


def assert_image(path):
    data = Path(path).read_bytes()
    assert len(data) > 1000
    if str(path).endswith(".png"):
        assert data[:8] == PNG_MAGIC
    else:
        assert data[:5] == b"%PDF-"


# ------------------------------------------------------------------------------- Finding 1
def test_kmeans_accuracy_separated_vs_random():
    feats, labels = blobs()
    # Labels given under an arbitrary renaming: clustering accuracy does not care.
    renamed = (labels * 3 + 1) % 5
    assert kmeans_accuracy(feats, renamed, seed=0, n_init=3) == pytest.approx(100.0)
    rng = np.random.default_rng(1)
    noise = rng.normal(size=(150, 16)).astype(np.float32)
    random_labels = rng.integers(0, 5, size=150)
    acc = kmeans_accuracy(noise, random_labels, seed=0, n_init=3)
    assert 20.0 <= acc < 45.0  # chance-level for 5 balanced-ish classes, far from 100


def test_cluster_table_outputs(tmp_path):
    rows = [
        {"dataset": "Animals92_42", "subset": "OOP", "num_classes": 5, "num_images": 20, "clustering_accuracy": 40.0},
        {"dataset": "Animals92_42", "subset": "IP", "num_classes": 3, "num_images": 12, "clustering_accuracy": 80.0},
        {"dataset": "Food53_27", "subset": "OOP", "num_classes": 4, "num_images": 16, "clustering_accuracy": 50.0},
        {"dataset": "Food53_27", "subset": "IP", "num_classes": 3, "num_images": 12, "clustering_accuracy": 70.0},
    ]
    md = render_markdown(rows)
    assert "| Animals | 40.00 (5) | 80.00 (3) |" in md
    assert "| Avg | 45.00 | 75.00 |" in md
    json_path, md_path = write_outputs(rows, str(tmp_path / "sub" / "table"))
    assert json.loads(Path(json_path).read_text())["rows"] == rows
    assert Path(md_path).read_text() == md


def test_cluster_eval_cli_on_toy_data(toy_root, tmp_path):
    from scripts.cluster_eval import main

    out = tmp_path / "ce"
    rc = main(["--root", str(toy_root), "--domains", "Animals", "--config", str(SMOKE),
               "--n-init", "2", "--out", str(out)])
    assert rc == 0
    rows = json.loads((tmp_path / "ce.json").read_text())["rows"]
    assert [(r["subset"], r["num_classes"]) for r in rows] == [("OOP", 5), ("IP", 3)]
    assert all(0.0 < r["clustering_accuracy"] <= 100.0 for r in rows)
    assert rows[0]["backbone"] == "test-tiny"


def test_feature_helper_matches_the_model(toy_root):
    from scripts.features import build_cfg, image_features, load_backbone, text_features

    cfg = build_cfg(str(toy_root), "Animals", str(SMOKE), seed=1)
    loaded = load_backbone(cfg, torch.device("cpu"))
    fs = image_features(cfg, loaded, "IP", ("test",), batch_size=5)
    assert fs.features.shape == (len(fs.impaths), loaded.embed_dim)
    assert np.allclose(np.linalg.norm(fs.features, axis=1), 1.0, atol=1e-5)
    assert fs.classnames == ["zebra", "red panda", "antlion"] and sorted(set(fs.labels.tolist())) == [0, 1, 2]
    # Independent path: read one image with the test transform and encode it directly.
    from dassl.data.transforms import build_transform
    from dassl.utils import read_image

    img = build_transform(cfg, is_train=False)(read_image(fs.impaths[3]))[None]
    with torch.no_grad():
        ref = torch.nn.functional.normalize(loaded.model.encode_image(img), dim=-1)[0].numpy()
    np.testing.assert_allclose(fs.features[3], ref, atol=1e-5)
    texts = text_features(loaded, ["a photo of a zebra.", "a photo of a cat."])
    with torch.no_grad():
        ref_t = loaded.model.encode_text(loaded.tokenizer(["a photo of a cat."]))
    np.testing.assert_allclose(texts[1], torch.nn.functional.normalize(ref_t, dim=-1)[0].numpy(), atol=1e-5)


def test_tsne_figure(tmp_path):
    oop, oop_y = blobs(4, 12, seed=1)
    ip, ip_y = blobs(3, 12, seed=2)
    png, pdf = plot_tsne(oop, oop_y, ip, ip_y, str(tmp_path / "tsne"), seed=0, perplexity=10)
    assert_image(png)
    assert_image(pdf)


# ------------------------------------------------------------------------------- Finding 2
def write_result(path: Path, **fields):
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.json").write_text(json.dumps(fields))


def test_zeroshot_bars_and_figure(tmp_path):
    values = {"Animals92_42": (20.0, 55.0), "Food53_27": (15.0, 60.0)}
    for ds, (oop, ip) in values.items():
        write_result(tmp_path / "runs" / ds / "ZeroshotCLIP_openclip" / "ZS_OOP" / "seed3",
                     trainer="ZeroshotCLIP_openclip", dataset=ds, sub_classes="OOP", accuracy=oop, oop=oop, ip=ip)
    # A trained run in the same tree must not leak into the zero-shot bars.
    write_result(tmp_path / "runs" / "Animals92_42" / "shots_4" / "train" / "FSNL_openclip" / "seed1",
                 trainer="FSNL_openclip", dataset="Animals92_42", sub_classes="OOP", accuracy=70.0, oop=70.0, ip=55.0)
    from scripts.plot_curves import load_groups

    groups = load_groups(str(tmp_path / "runs"))
    bars = zeroshot_bars(groups)
    assert bars["method"] == "ZeroshotCLIP_openclip"
    assert bars["datasets"] == ["Animals92_42", "Food53_27"]
    assert bars["oop"] == [20.0, 15.0] and bars["ip"] == [55.0, 60.0]
    png, pdf = plot_zeroshot(groups, str(tmp_path / "fig" / "zs"))
    assert_image(png)
    assert_image(pdf)
    with pytest.raises(ValueError, match="no zero-shot results of method"):
        zeroshot_bars(groups, method="CoOp")
    assert bars["others"] == []


def test_zeroshot_figure_names_the_variants_it_leaves_out(tmp_path, caplog, monkeypatch):
    """With two zero-shot variants in a tree, one was drawn and the other left out without a word, and the
    variant's long key ran off the figure's title."""
    for ds in ("Animals92_42", "Food53_27"):
        write_result(tmp_path / "runs" / ds / "ZeroshotCLIP_openclip" / "ZS_OOP" / "seed1",
                     trainer="ZeroshotCLIP_openclip", dataset=ds, sub_classes="OOP", accuracy=20.0, oop=20.0, ip=50.0)
    write_result(tmp_path / "runs" / "Animals92_42" / "ZeroshotCLIP2_openclip" / "ZS_OOP" / "seed1",
                 trainer="ZeroshotCLIP2_openclip", dataset="Animals92_42", sub_classes="OOP", accuracy=25.0, oop=25.0,
                 ip=55.0)
    from scripts.plot_curves import load_groups

    groups = load_groups(str(tmp_path / "runs"))
    assert zeroshot_bars(groups)["others"] == ["ZeroshotCLIP2_openclip"]
    import scripts.plot_zeroshot as module

    titles = []
    monkeypatch.setattr(module, "save_figure", lambda fig, out: titles.append((fig.get_figwidth(),
                                                                                fig.axes[0].get_title())))
    long_title = "Zero-shot accuracy (ZeroshotCLIP_openclip [INPUT.INTERPOLATION='bicubic', " + "x" * 150 + "])"
    with caplog.at_level("WARNING", logger="scripts.plot_zeroshot"):
        plot_zeroshot(groups, str(tmp_path / "fig" / "zs"), title=long_title)
    assert any("also found zero-shot results of ZeroshotCLIP2_openclip" in r.getMessage() for r in caplog.records)
    ((width, title),) = titles
    assert "".join(title.split()) == "".join(long_title.split())  # all of it, wrapped
    assert len(title.split("\n")) > 1 and all(len(line) <= width * 11 for line in title.split("\n"))


# ------------------------------------------------------------------------------- Finding 3
def test_parameter_counts_come_from_the_model():
    import open_clip

    from clip import register_repo_configs

    register_repo_configs()
    cpu_model = open_clip.create_model("test-tiny", pretrained=None)
    assert bbs.count_parameters("test-tiny") == sum(p.numel() for p in cpu_model.parameters())
    assert bbs.count_parameters("ViT-B/16") == 149_620_737  # open_clip's ViT-B-16, weights never loaded


def test_backbone_parsing():
    assert bbs.parse_backbone("ViT-B-16:openai") == bbs.Backbone("ViT-B-16", "openai")
    assert bbs.parse_backbone("EVA02-E-14-plus:laion2b_s9b_b144k").weights == "laion2b_s9b_b144k"
    with pytest.raises(ValueError, match="NAME:WEIGHTS"):
        bbs.parse_backbone("ViT-B-16")
    assert bbs.backbone_tag("ViT-B-16", "weights/my model.pt") == "ViT-B-16__my_model"


def test_scaling_jobs_follow_the_data_under_root(toy_root, tmp_path):
    """``--num-classes 3`` on a domain of 4 OOP classes gave every FSNL run the batch size and LR of 3
    classes (exit 0); a seed named twice was planned twice into one folder; ``--shots 1000`` was planned.
    The data decides where it is there; elsewhere ``num_classes`` stands in for it."""
    backbones = [bbs.Backbone("test-tiny", "none")]
    out = str(tmp_path / "out")
    with pytest.raises(ValueError, match="--num-classes 3: Pokemon89_39 under --root has 4 OOP classes"):
        bbs.build_jobs(str(toy_root), out, "Pokemon89_39", backbones, shots=2, num_classes=3)
    with pytest.raises(DomainError, match="--shots 1000: no class of Pokemon89_39"):
        bbs.build_jobs(str(toy_root), out, "Pokemon89_39", backbones, shots=1000)
    jobs = bbs.build_jobs(str(toy_root), out, "Pokemon89_39", backbones, shots=2, seeds=(1, 1, 2), num_classes=4)
    assert [j.argv[j.argv.index("--seed") + 1] for j in jobs] == ["1", "1", "2"]  # zero-shot, then FSNL 1 and 2
    assert len({j.done for j in jobs}) == len(jobs)
    elsewhere = bbs.build_jobs(str(tmp_path / "no_data"), out, "Pokemon89_39", backbones, shots=2, seeds=(1,),
                               num_classes=7)
    fsnl = list(elsewhere[-1].argv)
    assert fsnl[fsnl.index("DATALOADER.TRAIN_X.BATCH_SIZE") + 1] == str(2 * 7)


def test_scaling_jobs_and_plot(toy_root, tmp_path):
    backbones = [bbs.Backbone("test-tiny", "none"), bbs.Backbone("ViT-B-16", "openai")]
    out = tmp_path / "out"
    jobs = bbs.build_jobs(str(toy_root), str(out), "Pokemon89_39", backbones, shots=4, seeds=(1, 2))
    assert len(jobs) == 2 * (1 + 2)
    c = 4  # toy Pokemon OOP classes
    for job in jobs:
        argv = list(job.argv)
        assert argv[argv.index("--trainer") + 1] == "FSNL_openclip"
        name = argv[argv.index("--backbone") + 1]
        weights = argv[argv.index("MODEL.BACKBONE.WEIGHTS") + 1]
        assert (name, weights) in {("test-tiny", "none"), ("ViT-B-16", "openai")}
        size = argv[argv.index("INPUT.SIZE") + 1]
        assert size == ("(32, 32)" if name == "test-tiny" else "(224, 224)")
        if "--eval-only" in argv:
            assert "DATALOADER.TRAIN_X.BATCH_SIZE" not in argv
        else:
            assert argv[argv.index("DATALOADER.TRAIN_X.BATCH_SIZE") + 1] == str(4 * c)
            assert float(argv[argv.index("OPTIM.LR") + 1]) == pytest.approx(4 * c / 128 * 2e-4)

    # Fake finished runs; the plot reads them through parse_test_res.
    for job in jobs:
        argv = list(job.argv)
        seed = int(argv[argv.index("--seed") + 1])
        tiny = "test-tiny" in argv
        zs = "--eval-only" in argv
        oop = (10.0 if tiny else 15.0) if zs else (60.0 + seed if tiny else 80.0 + seed)
        # Written through the results contract with the job's own fingerprint: only that counts as done.
        results.write_results(str(Path(job.done).parent), {
            "trainer": "FSNL_openclip", "dataset": "Pokemon89_39", "seed": seed, "sub_classes": "OOP",
            "accuracy": oop, "oop": oop, "ip": 50.0}, command_fingerprint(job.argv))
    from scripts.sweep import split_done

    pending, done = split_done(jobs)
    assert not pending and len(done) == len(jobs)
    points = bbs.collect_points(str(out), "Pokemon89_39", backbones, shots=4)
    tiny, vit = points
    assert tiny["zeroshot"] == pytest.approx(10.0) and tiny["fsnl"] == pytest.approx(61.5)
    assert vit["zeroshot"] == pytest.approx(15.0) and vit["fsnl"] == pytest.approx(81.5)
    assert vit["params"] == 149_620_737 and tiny["params"] < vit["params"]
    png, pdf, js = bbs.plot_scaling(points, str(tmp_path / "fig" / "scaling"))
    assert_image(png)
    assert_image(pdf)
    assert json.loads(Path(js).read_text())["points"][1]["fsnl"] == pytest.approx(81.5)


def test_scaling_dry_run_prints_pending_only(toy_root, tmp_path, capsys):
    rc = bbs.main(["--root", str(toy_root), "--out", str(tmp_path / "out"), "--domain", "Pokemon",
                   "--backbones", "ViT-B-16:laion400m_e32", "--seeds", "1", "--dry-run"])
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all(ln.startswith("python train.py") for ln in lines)
    assert sum("--eval-only" in ln for ln in lines) == 1


@pytest.mark.parametrize("module, argv, expected", [
    ("plot_tsne", ["--domain", "Animals", "--max-per-class", "-1"], "argument --max-per-class: -1: must be >= 0"),
    ("cluster_eval", ["--domains", "Animals", "--batch-size", "-2"], "argument --batch-size: -2: must be >= 0"),
])
def test_a_negative_count_is_one_line_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture, module: str,
                                                      argv: list, expected: str) -> None:
    """Accepted before: a sample of -1 images per class, a batch of -2 (argparse took any int)."""
    main = {"plot_tsne": plot_tsne_script.main, "cluster_eval": cluster_eval.main}[module]
    with pytest.raises(SystemExit) as exit_info:
        main(["--root", str(tmp_path), "--out", str(tmp_path / "o"), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and err[0].startswith(f"error: {expected}"), err
    assert not list(tmp_path.iterdir())
