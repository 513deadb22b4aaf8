"""Config defaults, merge order of train.setup_cfg, seed 0, and one-line errors for config mistakes."""
from __future__ import annotations

import pytest
from yacs.config import CfgNode as CN

import train
from dassl.config import FINAL_MODEL_CHOICES, get_cfg_default
from dassl.data.datasets import DATASET_REGISTRY
from dassl.engine import TRAINER_REGISTRY
from dassl.utils import Registry, check_availability
from dassl.utils.registry import RegistryKeyError
from tests.helpers import stub_project_modules


def _fake_project_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stand-ins for datasets/, clip/ and trainers/ so these tests exercise only train.py + dassl."""

    def add_trainer_configs(cfg):
        cfg.TRAINER.TaskRes = CN()
        cfg.TRAINER.TaskRes.ENHANCED_BASE = "none"
        cfg.TRAINER.TaskRes.RESIDUAL_SCALE = 1.0

    stub_project_modules(monkeypatch, add_trainer_configs)


def test_defaults_match_spec():
    cfg = get_cfg_default()
    assert cfg.SEED == -1 and cfg.OUTPUT_DIR == "./output" and cfg.USE_CUDA is True
    assert tuple(cfg.INPUT.SIZE) == (224, 224)
    assert cfg.INPUT.INTERPOLATION == "bilinear"
    assert tuple(cfg.INPUT.RRCROP_SCALE) == (0.08, 1.0)
    assert cfg.DATALOADER.NUM_WORKERS == 4
    assert cfg.DATALOADER.TRAIN_X.SAMPLER == "RandomSampler" and cfg.DATALOADER.TRAIN_X.N_INS == 16
    assert cfg.DATALOADER.TEST.SAMPLER == "SequentialSampler"
    assert cfg.OPTIM.NAME == "adam" and cfg.OPTIM.LR == pytest.approx(3e-4)
    assert cfg.OPTIM.WARMUP_EPOCH == -1 and cfg.OPTIM.WARMUP_TYPE == "linear"
    assert cfg.OPTIM.WARMUP_RECOUNT is True and tuple(cfg.OPTIM.STEPSIZE) == (-1,)
    assert cfg.TRAIN.CHECKPOINT_FREQ == 0 and cfg.TRAIN.PRINT_FREQ == 10
    assert cfg.TEST.FINAL_MODEL == "last_step" and cfg.TEST.SPLIT == "test"
    assert tuple(cfg.TEST.CROSS_EVAL) == ("auto",)
    assert cfg.TRAINER.NAME == ""
    assert set(FINAL_MODEL_CHOICES) == {"last_step", "best_val", "best_test"}
    # A fresh copy each call: mutating one must not leak into the next.
    cfg.OPTIM.LR = 1.0
    assert get_cfg_default().OPTIM.LR == pytest.approx(3e-4)


def _write(path, text):
    path.write_text(text)
    return str(path)


def test_merge_order_and_seed_zero(tmp_path, monkeypatch):
    _fake_project_modules(monkeypatch)
    ds_yaml = _write(tmp_path / "ds.yaml", "DATASET:\n  NAME: ToyDS\nOPTIM:\n  LR: 0.1\n  MAX_EPOCH: 7\n"
                     "DATALOADER:\n  NUM_WORKERS: 3\n")
    tr_yaml = _write(tmp_path / "tr.yaml", "OPTIM:\n  LR: 0.2\n  MAX_EPOCH: 8\nSEED: 5\n"
                     "DATASET:\n  ROOT: from_yaml\n")
    args = train.parse_args([
        "--root", "from_cli", "--seed", "0", "--trainer", "Whatever",
        "--dataset-config-file", ds_yaml, "--config-file", tr_yaml,
        "--output-dir", str(tmp_path / "out"), "--backbone", "ViT-B-16",
        "OPTIM.MAX_EPOCH", "9", "DATASET.SUB_CLASSES", "IP",
    ])
    cfg = train.setup_cfg(args)
    assert cfg.DATASET.NAME == "ToyDS"              # dataset yaml over defaults
    assert cfg.DATALOADER.NUM_WORKERS == 3          # dataset yaml over defaults
    assert cfg.OPTIM.LR == pytest.approx(0.2)       # trainer yaml over dataset yaml
    assert cfg.DATASET.ROOT == "from_cli"           # CLI over trainer yaml
    assert cfg.SEED == 0                            # --seed 0 honoured over yaml's 5 (B18)
    assert cfg.OPTIM.MAX_EPOCH == 9                 # opts over everything
    assert cfg.DATASET.SUB_CLASSES == "IP"          # project key added by extend_cfg
    assert cfg.MODEL.BACKBONE.NAME == "ViT-B-16"
    assert cfg.TRAINER.NAME == "Whatever"
    assert cfg.is_frozen()


def test_seed_absent_keeps_yaml_and_enhanced_base(tmp_path, monkeypatch):
    _fake_project_modules(monkeypatch)
    tr_yaml = _write(tmp_path / "tr.yaml", "SEED: 5\n")
    args = train.parse_args(["--config-file", tr_yaml, "--enhanced-base", "clip", "OPTIM.LR", "1",
                             "TEST.CROSS_EVAL", "IP"])
    cfg = train.setup_cfg(args)
    assert cfg.SEED == 5
    assert cfg.TRAINER.TaskRes.ENHANCED_BASE == "clip"
    # int literal promoted to the float type of the default instead of a yacs type error
    assert isinstance(cfg.OPTIM.LR, float) and cfg.OPTIM.LR == 1.0
    assert tuple(cfg.TEST.CROSS_EVAL) == ("IP",)


def test_enhanced_base_before_opts_is_parsed():
    args = train.parse_args(["--trainer", "TaskRes", "--enhanced-base", "none", "DATASET.NUM_SHOTS", "4"])
    assert args.enhanced_base == "none"
    assert args.opts == ["DATASET.NUM_SHOTS", "4"]
    late = train.parse_args(["--trainer", "TaskRes", "DATASET.NUM_SHOTS", "4", "--enhanced-base", "clip"])
    assert late.enhanced_base == "clip" and late.opts == ["DATASET.NUM_SHOTS", "4"]


def test_option_after_overrides_is_a_config_error(monkeypatch):
    _fake_project_modules(monkeypatch)
    with pytest.raises(train.ConfigError, match="--seed"):
        train.setup_cfg(train.parse_args(["OPTIM.LR", "0.1", "--seed", "1"]))


def test_unknown_opts_key_names_closest(monkeypatch):
    _fake_project_modules(monkeypatch)
    args = train.parse_args(["OPTIM.MAX_EPOHC", "3"])
    with pytest.raises(train.ConfigError) as exc:
        train.setup_cfg(args)
    msg = str(exc.value)
    assert "OPTIM.MAX_EPOHC" in msg and '"OPTIM.MAX_EPOCH"' in msg and "\n" not in msg


def test_unknown_yaml_key_names_closest(tmp_path, monkeypatch):
    _fake_project_modules(monkeypatch)
    tr_yaml = _write(tmp_path / "tr.yaml", "TEST:\n  FINAL_MODLE: best_val\n")
    with pytest.raises(train.ConfigError) as exc:
        train.setup_cfg(train.parse_args(["--config-file", tr_yaml]))
    assert '"TEST.FINAL_MODEL"' in str(exc.value)


def test_type_mismatch_and_odd_opts_are_config_errors(monkeypatch):
    _fake_project_modules(monkeypatch)
    with pytest.raises(train.ConfigError, match="OPTIM.MAX_EPOCH"):
        train.setup_cfg(train.parse_args(["OPTIM.MAX_EPOCH", "abc"]))
    with pytest.raises(train.ConfigError, match="pairs"):
        train.setup_cfg(train.parse_args(["OPTIM.MAX_EPOCH"]))
    with pytest.raises(train.ConfigError, match="does not exist"):
        train.setup_cfg(train.parse_args(["--config-file", "no/such/file.yaml"]))


def test_validate_cfg_names_closest_trainer_and_choices(monkeypatch):
    _fake_project_modules(monkeypatch)

    class ToyConfigTrainer:  # never built; only its registered name matters here
        pass

    TRAINER_REGISTRY.register(ToyConfigTrainer, force=True)
    cfg = train.setup_cfg(train.parse_args(["--trainer", "ToyConfigTrainr"]))
    with pytest.raises(train.ConfigError, match='Did you mean "ToyConfigTrainer"'):
        train.validate_cfg(cfg)
    cfg = train.setup_cfg(train.parse_args(["--trainer", "ToyConfigTrainer", "DATASET.NAME", "NoSuchToyDS"]))
    with pytest.raises(train.ConfigError, match="DATASET.NAME"):
        train.validate_cfg(cfg)

    class ToyConfigDataset:
        pass

    DATASET_REGISTRY.register(ToyConfigDataset, force=True)
    cfg = train.setup_cfg(train.parse_args([
        "--trainer", "ToyConfigTrainer", "DATASET.NAME", "ToyConfigDataset", "TEST.FINAL_MODEL", "best_vall",
    ]))
    with pytest.raises(train.ConfigError, match='TEST.FINAL_MODEL.*Did you mean "best_val"'):
        train.validate_cfg(cfg)


def test_registry_miss_and_duplicates():
    reg = Registry("THING")

    @reg.register()
    class Alpha:
        pass

    with pytest.raises(RegistryKeyError) as exc:
        reg.get("Alpah")
    assert 'Did you mean "Alpha"' in str(exc.value)
    with pytest.raises(KeyError):
        reg.register(Alpha)
    reg.register(Alpha, force=True)
    assert reg.registered_names() == ["Alpha"]
    with pytest.raises(ValueError, match='Did you mean "sgd"'):
        check_availability("sdg", ["sgd", "adam"])


def test_real_extend_cfg_adds_project_keys():
    """The real datasets/clip/trainers packages provide the keys of docs/architecture.md."""
    cfg = get_cfg_default()
    train.extend_cfg(cfg)
    assert cfg.DATASET.SUB_CLASSES == "OOP"
    assert "WEIGHTS" in cfg.MODEL.BACKBONE


def test_build_cfg_is_the_command_line_as_a_library_call():
    """Friendly names resolve to the repository's yaml files; the result equals train.py's config."""
    from configs import build_cfg

    lib = build_cfg(trainer="FSNL_openclip", dataset="MiniAnimals", config="mini_cpu", seed=0, root="data/x",
                    opts=["DATASET.NUM_SHOTS", 4])
    cli = train.setup_cfg(train.parse_args([
        "--trainer", "FSNL_openclip", "--seed", "0", "--root", "data/x",
        "--dataset-config-file", "configs/datasets/MiniAnimals.yaml",
        "--config-file", "configs/trainers/FSNL_openclip/mini_cpu.yaml", "DATASET.NUM_SHOTS", "4",
    ]))
    assert lib.dump() == cli.dump()
    assert (lib.SEED, lib.DATASET.NAME, lib.DATASET.NUM_SHOTS) == (0, "MiniAnimals", 4)


def test_build_cfg_names_the_closest_config_and_unknown_fields():
    from configs import build_cfg

    with pytest.raises(train.ConfigError, match='trainer config "mini_cp" not found.*did you mean "mini_cpu"'):
        build_cfg(trainer="FSNL_openclip", config="mini_cp")
    with pytest.raises(train.ConfigError, match="unknown field"):
        build_cfg(trainer="FSNL_openclip", roots="x")
