"""OpenAI CLIP's ``clip.model`` on open_clip: :class:`CLIP` with OpenAI's attribute layout.

CoOp-family trainers reach into the model: they add ``positional_embedding`` to their own prompt
embeddings, permute to *sequence-first* (LND) and call ``transformer(x)`` with no mask, then apply
``ln_final``, pick the EOT row and multiply by ``text_projection``; they read ``dtype``,
``visual.input_resolution``, ``visual.output_dim``, ``ln_final.weight.shape`` and ``logit_scale``.
:class:`CLIP` exposes exactly that layout around open_clip's modules:

* ``transformer`` is a :class:`SequenceFirstTransformer`: open_clip's residual blocks (which are
  batch-first) behind an LND interface, with OpenAI's causal mask built in (cut to the input length);
* ``visual`` is open_clip's ``VisionTransformer`` / ``ModifiedResNet`` (same parameter names as
  OpenAI's), given OpenAI's ``input_resolution`` attribute;
* the state-dict keys are OpenAI's, so :func:`build_model` loads an OpenAI checkpoint (JIT archive
  state dict or plain state dict, open_clip's ``openai`` hub files included) strictly, and
  ``model.state_dict()`` is again an OpenAI-format state dict.

:func:`build_model` returns OpenAI's mixed precision (weights of linear/conv/attention layers and
the two projections in fp16, as OpenAI's ``convert_weights``); CoOp's trainers call ``.float()``
for ``PREC fp32 / amp``.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
from open_clip.model import CLIP as OpenCLIPModel
from open_clip.model import build_model_from_openai_state_dict, convert_weights_to_lp
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import LayerNorm, QuickGELU, ResidualAttentionBlock, VisionTransformer
from torch import nn

__all__ = [
    "CLIP",
    "LayerNorm",
    "ModifiedResNet",
    "QuickGELU",
    "ResidualAttentionBlock",
    "SequenceFirstTransformer",
    "VisionTransformer",
    "build_model",
    "convert_weights",
]

#: Entries of OpenAI JIT state dicts that are not weights.
NON_WEIGHT_KEYS = ("input_resolution", "context_length", "vocab_size")


class SequenceFirstTransformer(nn.Module):
    """OpenAI's ``Transformer`` interface (``[L, N, D]`` in and out) over open_clip's blocks.

    ``attn_mask`` (``[Lmax, Lmax]``, -inf above the diagonal) is applied to every call, as in
    OpenAI's text transformer, whose callers never pass a mask; it is sliced to the input length so
    shorter sequences work too. The blocks are the open_clip model's own modules (shared weights),
    registered under ``resblocks`` so parameter names stay ``transformer.resblocks.<i>.…``.
    """

    def __init__(self, transformer: nn.Module, attn_mask: Optional[torch.Tensor] = None) -> None:
        super().__init__()
        self.width = int(transformer.width)
        self.layers = int(transformer.layers)
        self.resblocks = transformer.resblocks
        self.batch_first = bool(getattr(transformer, "batch_first", True))
        if attn_mask is not None:
            self.register_buffer("attn_mask", attn_mask.detach().clone(), persistent=False)
        else:
            self.attn_mask = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length = x.shape[0]
        mask = None if self.attn_mask is None else self.attn_mask[:length, :length]
        if self.batch_first:
            x = x.transpose(0, 1)
        for block in self.resblocks:
            x = block(x, attn_mask=mask)
        return x.transpose(0, 1) if self.batch_first else x


class CLIP(nn.Module):
    """An OpenAI-layout CLIP sharing the modules (and weights) of an open_clip ``CLIP``."""

    def __init__(self, model: OpenCLIPModel) -> None:
        super().__init__()
        if not isinstance(model, OpenCLIPModel) or isinstance(model.text_projection, nn.Linear):
            raise TypeError("clip.model.CLIP wraps an open_clip CLIP with OpenAI's text tower "
                            f"(a text_projection matrix), got {type(model).__name__}")
        self.context_length = int(model.context_length)
        self.vocab_size = int(model.vocab_size)
        self.visual = model.visual
        self.visual.input_resolution = int(_two(model.visual.image_size)[0])
        self.transformer = SequenceFirstTransformer(model.transformer, model.attn_mask)
        self.token_embedding = model.token_embedding
        self.positional_embedding = model.positional_embedding
        self.ln_final = model.ln_final
        self.text_projection = model.text_projection
        self.logit_scale = model.logit_scale

    @property
    def dtype(self) -> torch.dtype:
        """The dtype inputs are cast to (OpenAI: the first conv's weight dtype)."""
        return self.visual.conv1.weight.dtype

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return self.visual(image.type(self.dtype))

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(text).type(self.dtype)
        x = x + self.positional_embedding.type(self.dtype)
        x = self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
        x = self.ln_final(x).type(self.dtype)
        eot = text.argmax(dim=-1)  # the EOT id is the largest id of every sequence
        return x[torch.arange(x.shape[0], device=x.device), eot] @ self.text_projection

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        image_features = self.encode_image(image)
        text_features = self.encode_text(text)
        image_features = image_features / image_features.norm(dim=1, keepdim=True)
        text_features = text_features / text_features.norm(dim=1, keepdim=True)
        logits_per_image = self.logit_scale.exp() * image_features @ text_features.t()
        return logits_per_image, logits_per_image.t()


def _two(size: Any) -> Tuple[int, int]:
    if isinstance(size, (tuple, list)):
        return int(size[0]), int(size[-1])
    return int(size), int(size)


def convert_weights(model: nn.Module) -> None:
    """OpenAI's ``convert_weights``: linear/conv/attention weights and the projections to fp16."""
    convert_weights_to_lp(model, torch.float16)
    for module in model.modules():
        if isinstance(module, CLIP) and module.text_projection is not None:
            module.text_projection.data = module.text_projection.data.half()


def build_model(state_dict: Dict[str, torch.Tensor]) -> CLIP:
    """An OpenAI-layout CLIP (in eval mode) from an OpenAI-format state dict.

    The architecture is read off the tensor shapes as OpenAI does (heads = width / 64, QuickGELU),
    via open_clip's builder; the caller's dict is not modified. Attention masks (which a JIT archive
    of this module carries as buffers) are rebuilt from the context length, not loaded.
    """
    state = {k: v for k, v in state_dict.items()
             if k not in NON_WEIGHT_KEYS and not k.endswith("attn_mask")}  # masks are rebuilt, not loaded
    missing = [k for k in ("text_projection", "positional_embedding", "token_embedding.weight") if k not in state]
    if missing:
        raise ValueError(f"not an OpenAI CLIP state dict: it lacks {missing}")
    model = build_model_from_openai_state_dict(state, quick_gelu=True, cast_dtype=torch.float16)
    return CLIP(model).eval()

