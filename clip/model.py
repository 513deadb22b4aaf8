"""OpenAI CLIP's ``clip.model`` on open_clip: :class:`CLIP` with OpenAI's attribute layout.

CoOp-family trainers reach into the model: they add ``positional_embedding`` to their own prompt
embeddings, permute to *sequence-first* (LND) and call ``transformer(x)`` with no mask, then apply
``ln_final``, pick the EOT row and multiply by ``text_projection``; they read ``dtype``,
``visual.input_resolution``, ``visual.output_dim``, ``ln_final.weight.shape`` and ``logit_scale``.
Visual-prompt descendants (DAPT, VPT-style) do the same on the image side: ``visual.conv1``, the
class and positional embeddings, ``ln_pre``, then ``visual.transformer(x)`` on LND input,
``ln_post`` and ``proj``. :class:`CLIP` exposes exactly that layout around open_clip's modules:

* ``transformer`` and ``visual.transformer`` are OpenAI :class:`Transformer` s: an ``nn.Sequential``
  ``resblocks`` of OpenAI :class:`ResidualAttentionBlock` s, each sequence-first (``[L, N, D]`` in
  and out) and holding its own ``attn_mask`` (the text tower's causal mask, cut to the input length;
  ``None`` in the image tower), around open_clip's own (batch-first) attention, MLP and norms;
* a ViT ``visual`` is an OpenAI :class:`VisionTransformer` over open_clip's modules (its ``forward``
  is OpenAI's, so a trainer's step-by-step image path and ``encode_image`` agree); a ResNet
  ``visual`` is open_clip's ``ModifiedResNet`` (OpenAI's layout already), given ``input_resolution``;
* the state-dict keys are OpenAI's, so :func:`build_model` loads an OpenAI checkpoint (JIT archive
  state dict or plain state dict, open_clip's ``openai`` hub files included) strictly, and
  ``model.state_dict()`` is again an OpenAI-format state dict.

Why wrappers and not open_clip's modules as they are: open_clip's transformers are batch-first, so
an OpenAI-style call on ``[L, N, D]`` ran without an error and attended across the batch instead of
the sequence (and a text block called alone ran without its causal mask) -- silently wrong features.

:func:`build_model` returns OpenAI's mixed precision (weights of linear/conv/attention layers and
the two projections in fp16, as OpenAI's ``convert_weights``); CoOp's trainers call ``.float()``
for ``PREC fp32 / amp``.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import torch
from open_clip.model import CLIP as OpenCLIPModel
from open_clip.model import build_model_from_openai_state_dict, convert_weights_to_lp
from open_clip.modified_resnet import AttentionPool2d, Bottleneck, ModifiedResNet
from open_clip.transformer import LayerNorm, QuickGELU
from open_clip.transformer import ResidualAttentionBlock as OpenCLIPBlock
from open_clip.transformer import VisionTransformer as OpenCLIPVisionTransformer
from torch import nn

__all__ = [
    "CLIP",
    "AttentionPool2d",
    "Bottleneck",
    "LayerNorm",
    "ModifiedResNet",
    "QuickGELU",
    "ResidualAttentionBlock",
    "Transformer",
    "VisionTransformer",
    "build_model",
    "convert_weights",
]

#: Entries of OpenAI JIT state dicts that are not weights.
NON_WEIGHT_KEYS = ("input_resolution", "context_length", "vocab_size")


class ResidualAttentionBlock(nn.Module):
    """OpenAI's residual attention block: ``[L, N, D]`` in and out, masked by its own ``attn_mask``.

    ``ResidualAttentionBlock(d_model, n_head, attn_mask)`` builds a fresh block with OpenAI's modules
    (sequence-first attention, QuickGELU MLP), for trainers that build an extra transformer as
    OpenAI's code does; :meth:`from_open_clip` adopts an open_clip block's modules instead (shared
    weights, same parameter names) and runs its batch-first attention on transposed input.
    ``attn_mask`` is cut to the input length, so a block also serves sequences shorter than the
    context (OpenAI's mask is fixed at 77 there).
    """

    def __init__(self, d_model: int, n_head: int, attn_mask: Optional[torch.Tensor] = None,
                 modules: Optional[Mapping[str, nn.Module]] = None) -> None:
        super().__init__()
        if modules is None:
            modules = {
                "attn": nn.MultiheadAttention(d_model, n_head),
                "ln_1": LayerNorm(d_model),
                "mlp": nn.Sequential(OrderedDict([("c_fc", nn.Linear(d_model, d_model * 4)), ("gelu", QuickGELU()),
                                                  ("c_proj", nn.Linear(d_model * 4, d_model))])),
                "ln_2": LayerNorm(d_model),
            }
        self.attn = modules["attn"]
        self.ln_1 = modules["ln_1"]
        self.mlp = modules["mlp"]
        self.ln_2 = modules["ln_2"]
        # open_clip's LayerScale (an identity for OpenAI weights, so no state-dict key)
        self.ls_1 = modules.get("ls_1", nn.Identity())
        self.ls_2 = modules.get("ls_2", nn.Identity())
        self.register_buffer("attn_mask", attn_mask, persistent=False)

    @classmethod
    def from_open_clip(cls, block: nn.Module, attn_mask: Optional[torch.Tensor] = None) -> ResidualAttentionBlock:
        """OpenAI's interface over an open_clip self-attention block (its modules, not copies)."""
        if not isinstance(block, OpenCLIPBlock) or hasattr(block, "ln_1_kv"):
            raise TypeError(f"expected an open_clip self-attention ResidualAttentionBlock, got {type(block).__name__}")
        names = ("attn", "ln_1", "mlp", "ln_2", "ls_1", "ls_2")
        return cls(block.attn.embed_dim, block.attn.num_heads, attn_mask,
                   modules={n: getattr(block, n) for n in names})

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """Self-attention of ``x`` (``[L, N, D]``) under ``attn_mask`` (cut to ``L``)."""
        mask = self.attn_mask
        if mask is not None:
            mask = mask[: x.shape[0], : x.shape[0]].to(device=x.device)
            mask = mask.to(x.dtype) if mask.is_floating_point() else mask
        batch_first = bool(getattr(self.attn, "batch_first", False))
        h = x.transpose(0, 1) if batch_first else x
        out = self.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        return out.transpose(0, 1) if batch_first else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls_1(self.attention(self.ln_1(x)))
        return x + self.ls_2(self.mlp(self.ln_2(x)))


class Transformer(nn.Module):
    """OpenAI's ``Transformer``: ``resblocks`` (an ``nn.Sequential``) on ``[L, N, D]``, no mask argument.

    ``Transformer(width, layers, heads, attn_mask)`` builds fresh OpenAI blocks; :meth:`from_open_clip`
    wraps an open_clip transformer's blocks (shared weights, parameter names
    ``resblocks.<i>.…`` as in both libraries).
    """

    def __init__(self, width: int, layers: int, heads: int, attn_mask: Optional[torch.Tensor] = None,
                 blocks: Optional[Sequence[ResidualAttentionBlock]] = None) -> None:
        super().__init__()
        self.width = int(width)
        self.layers = int(layers)
        if blocks is None:
            blocks = [ResidualAttentionBlock(width, heads, attn_mask) for _ in range(layers)]
        self.resblocks = nn.Sequential(*blocks)

    @classmethod
    def from_open_clip(cls, transformer: nn.Module, attn_mask: Optional[torch.Tensor] = None) -> Transformer:
        blocks = [ResidualAttentionBlock.from_open_clip(b, attn_mask) for b in transformer.resblocks]
        heads = blocks[0].attn.num_heads if blocks else 0
        return cls(int(transformer.width), len(blocks), heads, attn_mask, blocks=blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resblocks(x)


class VisionTransformer(nn.Module):
    """OpenAI's image ViT (its attributes and its ``forward``) over an open_clip ``VisionTransformer``.

    Only open_clip ViTs that compute what OpenAI's does are accepted (class-token pooling, ``ln_post``
    before pooling, no attentional pooler, no active patch dropout): every OpenAI-format checkpoint.
    """

    def __init__(self, visual: nn.Module) -> None:
        super().__init__()
        problems = [what for what, bad in (
            ("not an open_clip VisionTransformer", not isinstance(visual, OpenCLIPVisionTransformer)),
            ("an attentional pooler", getattr(visual, "attn_pool", None) is not None),
            ("pooling other than the class token", getattr(visual, "pool_type", "tok") != "tok"),
            ("ln_post after pooling", bool(getattr(visual, "final_ln_after_pool", False))),
            ("patch dropout", float(getattr(getattr(visual, "patch_dropout", None), "prob", 0.0)) > 0),
        ) if bad]
        if problems:
            raise TypeError(f"this visual tower has no OpenAI equivalent: {', '.join(problems)}")
        self.input_resolution = int(_two(visual.image_size)[0])
        self.output_dim = int(visual.output_dim)
        self.conv1 = visual.conv1
        self.class_embedding = visual.class_embedding
        self.positional_embedding = visual.positional_embedding
        self.ln_pre = visual.ln_pre
        self.transformer = Transformer.from_open_clip(visual.transformer)
        self.ln_post = visual.ln_post
        self.proj = visual.proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)  # [N, width, grid, grid]
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # [N, grid**2, width]
        cls_token = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls_token, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(x)
        x = self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)  # through the LND interface
        x = self.ln_post(x[:, 0, :])
        return x @ self.proj if self.proj is not None else x


class CLIP(nn.Module):
    """An OpenAI-layout CLIP sharing the modules (and weights) of an open_clip ``CLIP``."""

    def __init__(self, model: OpenCLIPModel) -> None:
        super().__init__()
        if not isinstance(model, OpenCLIPModel) or isinstance(model.text_projection, nn.Linear):
            raise TypeError("clip.model.CLIP wraps an open_clip CLIP with OpenAI's text tower "
                            f"(a text_projection matrix), got {type(model).__name__}")
        self.context_length = int(model.context_length)
        self.vocab_size = int(model.vocab_size)
        if isinstance(model.visual, OpenCLIPVisionTransformer):
            self.visual = VisionTransformer(model.visual)
        else:  # open_clip's ModifiedResNet: OpenAI's layout and forward already
            self.visual = model.visual
            self.visual.input_resolution = int(_two(model.visual.image_size)[0])
        self.transformer = Transformer.from_open_clip(model.transformer, model.attn_mask)
        self.token_embedding = model.token_embedding
        self.positional_embedding = model.positional_embedding
        self.ln_final = model.ln_final
        self.text_projection = model.text_projection
        self.logit_scale = model.logit_scale

    def build_attention_mask(self) -> torch.Tensor:
        """OpenAI's causal text mask, ``[context_length, context_length]``: -inf above the diagonal."""
        return torch.full((self.context_length, self.context_length), float("-inf")).triu_(1)

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
    for module in model.modules():  # the projections open_clip's converter does not know on these classes
        projection = (module.text_projection if isinstance(module, CLIP)
                      else module.proj if isinstance(module, VisionTransformer) else None)
        if projection is not None:
            projection.data = projection.data.half()


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

