"""CLIP's text tower run on token *embeddings*, so learned rows can be spliced into a prompt."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

TRUNCATABLE_POOLS = ("argmax", "eos")


class TextEncoder(nn.Module):
    """A parameter-free view onto the text tower of a loaded open_clip model.

    It registers no sub-module, parameter or buffer: the frozen tower (and its 49408×W token table,
    B8) stays owned by the CLIP model, so this encoder can sit inside any trainer module without its
    weights entering an optimiser or a checkpoint. The model must already be on its device.

    Works for ``CLIP`` (text tower flattened onto the model) and ``CustomTextCLIP`` (tower at
    ``model.text``, e.g. the EVA configs). HF text towers and CoCa-style class tokens are not
    supported because they do not run from token embeddings the same way.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if hasattr(model, "transformer") and hasattr(model, "token_embedding"):
            tower = model
            pool_type = getattr(model, "text_pool_type", "argmax")
            eos_id = getattr(model, "text_eos_id", None)
        else:
            tower = getattr(model, "text", None)
            if tower is None or not hasattr(tower, "transformer") or not hasattr(tower, "token_embedding"):
                raise NotImplementedError(
                    f"{type(model).__name__}: text tower {type(tower).__name__} cannot run from token "
                    "embeddings (HF text towers are not supported)"
                )
            if getattr(tower, "cls_emb", None) is not None or getattr(tower, "use_pad_mask", False):
                raise NotImplementedError("Text towers with a class token or padding mask are not supported")
            pool_type = getattr(tower, "pool_type", "argmax")
            eos_id = getattr(tower, "eos_id", None)
        if pool_type == "none":
            raise NotImplementedError("pool_type 'none' returns token features, not one vector per text")
        # object.__setattr__ keeps the tower out of nn.Module's registries (see class docstring)
        object.__setattr__(self, "_tower", tower)
        self.pool_type = pool_type
        self.eos_id = eos_id
        self.context_length = int(model.context_length)

    # ------------------------------------------------------------------ views onto the tower
    @property
    def token_embedding(self) -> nn.Embedding:
        return self._tower.token_embedding

    @property
    def transformer(self) -> nn.Module:
        return self._tower.transformer

    @property
    def attn_mask(self) -> Optional[torch.Tensor]:
        return getattr(self._tower, "attn_mask", None)

    @property
    def cast_dtype(self) -> torch.dtype:
        transformer = self.transformer
        if hasattr(transformer, "get_cast_dtype"):
            return transformer.get_cast_dtype()
        return next(transformer.parameters()).dtype

    @property
    def can_truncate(self) -> bool:
        """Cutting the sequence after the pooled token is exact only for causal, EOT-pooled towers."""
        return self.attn_mask is not None and self.pool_type in TRUNCATABLE_POOLS

    # ------------------------------------------------------------------ forward
    def _run_transformer(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor]) -> torch.Tensor:
        transformer = self.transformer
        # B1: the reference permuted to sequence-first unconditionally. Current open_clip transformers
        # take batch-first input and carry a `batch_first` attribute (when it is False they transpose
        # internally, so the input is still batch-first); only legacy versions without the attribute
        # expect (L, N, W).
        if getattr(transformer, "batch_first", None) is None:
            return transformer(x.permute(1, 0, 2), attn_mask=attn_mask).permute(1, 0, 2)
        return transformer(x, attn_mask=attn_mask)

    def forward(self, embeds: torch.Tensor, eot_idx: torch.Tensor, truncate: bool = True) -> torch.Tensor:
        """``[N, L, W]`` token embeddings and ``[N]`` pooling positions to ``[N, D]`` text features.

        With ``truncate`` only the first ``max(eot_idx) + 1`` positions are run; later positions
        cannot influence earlier ones under the causal mask, so the result is unchanged while the
        attention cost drops from 77² to (prompt length)².
        """
        tower = self._tower
        cast = self.cast_dtype
        length = embeds.shape[1]
        if truncate and self.can_truncate:
            length = min(length, int(eot_idx.max()) + 1)
        x = embeds[:, :length].to(cast) + tower.positional_embedding[:length].to(cast)
        mask = self.attn_mask
        if mask is not None:
            mask = mask[:length, :length]
        x = self._run_transformer(x, mask)
        x = tower.ln_final(x)
        if self.pool_type == "first":
            pooled = x[:, 0]
        elif self.pool_type == "last":
            pooled = x[:, -1]
        else:
            pooled = x[torch.arange(x.shape[0], device=x.device), eot_idx.to(x.device)]
        proj = tower.text_projection
        if proj is None:
            return pooled
        if isinstance(proj, nn.Linear):
            return proj(pooled)
        return pooled @ proj

    def eot_positions(self, ids: torch.Tensor) -> torch.Tensor:
        """Pooling positions of token-id rows, with open_clip's rule for this tower."""
        if self.pool_type == "eos" and self.eos_id is not None:
            return (ids == self.eos_id).int().argmax(dim=-1)
        return ids.argmax(dim=-1)

    def encode_ids(self, ids: torch.Tensor, truncate: bool = True) -> torch.Tensor:
        """The same as ``model.encode_text(ids)`` (unnormalised), via :meth:`forward`."""
        embeds = self.token_embedding(ids)
        return self(embeds, self.eot_positions(ids), truncate=truncate)
