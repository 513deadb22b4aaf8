"""``eval``: zero-shot and k-means accuracy of a mini-clip weights file on the benchmark's test views."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import SafetensorError, safe_open
from sklearn.cluster import KMeans

from dassl.evaluation.clustering import clustering_accuracy

from .common import DOMAINS, MODEL_CONFIG_DIR, MODEL_NAME, ZERO_SHOT_TEMPLATE, Assets
from .views import SUBSETS, jpeg_bytes, normalize, render_views, subset_records


def create_mini_clip(weights: Optional[Path] = None):
    """``open_clip`` model + tokenizer for ``mini-clip`` (random init when ``weights`` is None)."""
    open_clip.add_model_config(MODEL_CONFIG_DIR)
    model = open_clip.create_model(MODEL_NAME, pretrained=str(weights) if weights else None)
    return model, open_clip.get_tokenizer(MODEL_NAME)


def check_weights(weights: Path, option: str = "--weights") -> None:
    """Refuse (one-line ``ValueError`` naming ``option``) a ``weights`` path that cannot be a mini-clip
    checkpoint: missing, not a regular file, empty, a broken safetensors header, or tensors of another
    architecture. Only the header is read, so the check is cheap and runs before any evaluation;
    open_clip's own failures were tracebacks (``header too small``, ``not a known tag``)."""
    fix = "give the mini_clip.safetensors that `python -m tools.mini_beyond pretrain` writes"
    if not weights.is_file():
        what = "is a directory" if weights.is_dir() else "does not exist" if not weights.exists() else "is no regular file"
        raise ValueError(f'{option} "{weights}" {what}; {fix}')
    try:
        with safe_open(str(weights), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (OSError, SafetensorError) as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise ValueError(f'{option} "{weights}" is not a readable safetensors file ({reason}); {fix}') from None
    # the architecture's tensors, from its config (open_clip's factory would log a "random init" warning)
    open_clip.add_model_config(MODEL_CONFIG_DIR)
    expected = {k: tuple(v.shape) for k, v in open_clip.CLIP(**open_clip.get_model_config(MODEL_NAME)).state_dict().items()}
    if shapes != expected:
        differ = sorted(set(shapes) ^ set(expected)) or sorted(k for k in expected if shapes[k] != expected[k])
        raise ValueError(f'{option} "{weights}" does not hold {MODEL_NAME} weights ({len(differ)} tensor(s) '
                         f"missing, extra or of another shape, e.g. {differ[0]}); {fix}")


@torch.no_grad()
def encode_images(model, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    feats = [model.encode_image(normalize(images[i:i + batch_size])) for i in range(0, len(images), batch_size)]
    return F.normalize(torch.cat(feats), dim=-1)


@torch.no_grad()
def encode_texts(model, tokenizer, texts: Sequence[str]) -> torch.Tensor:
    return F.normalize(model.encode_text(tokenizer(list(texts))), dim=-1)


def _jpeg_roundtrip(views: np.ndarray) -> torch.Tensor:
    dec = [np.asarray(Image.open(io.BytesIO(jpeg_bytes(v))).convert("RGB")) for v in views]
    return torch.from_numpy(np.stack(dec)).permute(0, 3, 1, 2).float().div_(255)


@torch.no_grad()
def evaluate(
    model, tokenizer, assets: Assets, per_class: int = 10, seed: int = 0, kmeans: bool = True,
    domains: Optional[Sequence[str]] = None,
) -> Dict[str, object]:
    """Zero-shot (and k-means) accuracy on the benchmark's test views, per domain and subset.

    The views are exactly the ``test`` split ``build`` writes (same stream, JPEG round trip), and
    zero-shot uses ``ZERO_SHOT_TEMPLATE`` with the domain hint, i.e. what the ZS trainer sees.
    """
    model.eval()
    out: Dict[str, object] = {"per_domain": {}}
    for d in DOMAINS:
        if domains is not None and d.name not in domains:
            continue
        res: Dict[str, float] = {}
        for subset in SUBSETS:
            recs = subset_records(assets, d.name, subset)
            views, labels, _ = render_views(assets, d.name, subset, "test", per_class, seed)
            img = encode_images(model, _jpeg_roundtrip(views))
            txt = encode_texts(model, tokenizer, [ZERO_SHOT_TEMPLATE.format(name=r["classname"], hint=d.hint) for r in recs])
            y = np.asarray(labels)
            res[f"zs_{subset.lower()}"] = 100 * float(((img @ txt.T).argmax(1).numpy() == y).mean())
            res[f"chance_{subset.lower()}"] = 100 / len(recs)
            if kmeans:
                pred = KMeans(n_clusters=len(recs), n_init=3, random_state=seed).fit_predict(img.numpy())
                res[f"kmeans_{subset.lower()}"] = clustering_accuracy(y, pred)
        out["per_domain"][d.name] = res
    keys = sorted({k for r in out["per_domain"].values() for k in r})
    out["mean"] = {k: float(np.mean([r[k] for r in out["per_domain"].values()])) for k in keys}
    return out



def format_eval(res: Dict[str, object]) -> str:
    lines = [f"{'domain':<10} {'ZS IP':>7} {'ZS OOP':>7} {'chance':>7} {'KM IP':>7} {'KM OOP':>7}"]
    rows = list(res["per_domain"].items()) + [("mean", res["mean"])]
    for name, r in rows:
        lines.append(f"{name:<10} {r['zs_ip']:7.1f} {r['zs_oop']:7.1f} {r['chance_oop']:7.1f} "
                     f"{r.get('kmeans_ip', float('nan')):7.1f} {r.get('kmeans_oop', float('nan')):7.1f}")
    return "\n".join(lines)

