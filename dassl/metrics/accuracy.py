"""Top-k accuracy used by trainers for their per-batch ``acc`` in the loss summary."""
from __future__ import annotations

from typing import List, Sequence

import torch

__all__ = ["compute_accuracy"]


def compute_accuracy(output: torch.Tensor, target: torch.Tensor, topk: Sequence[int] = (1,)) -> List[torch.Tensor]:
    """Top-k accuracies (in percent, as 0-d tensors) of ``output [N, C]`` against ``target [N]``."""
    maxk = max(topk)
    batch_size = target.size(0)
    if isinstance(output, (tuple, list)):
        output = output[0]
    _, pred = output.topk(maxk, 1, True, True)
    pred = pred.t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    res = []
    for k in topk:
        correct_k = correct[:k].reshape(-1).float().sum(0, keepdim=True)
        res.append(correct_k.mul_(100.0 / batch_size))
    return res
