"""Inference-time folding of BatchNorm into the preceding convolution.

In eval mode a BatchNorm is an affine map per channel, so ``bn(conv(x))`` equals a
convolution with scaled weights and a shifted bias.  Folding removes one pass over
every encoder feature map and, under bf16 autocast, the fp32 round trips that
BatchNorm forces.  The result is a new model (the input is not modified) whose
outputs equal the original's up to float rounding.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn


def _fold_pair(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)  # (C_out,)
    w = conv.weight.detach() * scale[:, None, None, None]
    b = conv.bias.detach() if conv.bias is not None else torch.zeros_like(bn.running_mean)
    b = (b - bn.running_mean) * scale + bn.bias.detach()
    conv.weight = nn.Parameter(w, requires_grad=False)
    conv.bias = nn.Parameter(b, requires_grad=False)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (in eval mode) with every conv -> BatchNorm pair folded into the conv.

    Pairs are recognised by name, as in torchvision/STCN ResNets: ``convN`` + ``bnN`` attributes of
    one module, and ``Sequential(conv, bn)`` downsample branches.  Returns the copy in eval mode.
    """
    out = copy.deepcopy(model).eval()
    with torch.no_grad():
        for module in out.modules():
            for suffix in ("", "1", "2", "3"):
                conv, bn = getattr(module, f"conv{suffix}", None), getattr(module, f"bn{suffix}", None)
                if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
                    _fold_pair(conv, bn)
                    setattr(module, f"bn{suffix}", nn.Identity())
            if isinstance(module, nn.Sequential) and len(module) == 2 and isinstance(module[0], nn.Conv2d) \
                    and isinstance(module[1], nn.BatchNorm2d):
                _fold_pair(module[0], module[1])
                module[1] = nn.Identity()
    return out
