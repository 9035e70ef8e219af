"""Activation outliers (Bondarenko et al. 2023; spec section 3), streamed over samples.

On the hidden states = outputs of the decoder layers (the residual stream after each layer):
- max infinity norm: the largest |x| over layers, tokens and channels; also with position 0
  excluded (a sink token on position 0 usually holds the largest activation; a second sink
  elsewhere shows up only in the excluded figure);
- kurtosis `E[(x - mu)^4] / sigma^4` over the hidden dimension of each token (not excess: a
  Gaussian has 3), averaged over tokens and then layers.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from ..patch import unwrap_peft
from .attention import attention_layers


def kurtosis(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """E[(x-mu)^4] / sigma^4 along `dim` (population moments, float64)."""
    x = x.double()
    d = x - x.mean(dim, keepdim=True)
    m2 = d.pow(2).mean(dim)
    return d.pow(4).mean(dim) / m2.pow(2).clamp_min(1e-300)


def decoder_layers(model: nn.Module) -> list[tuple[int, nn.Module]]:
    """[(layer_idx, decoder layer)]: the parent module of each decoder self-attention module."""
    base = unwrap_peft(model)
    named = dict(base.named_modules())
    out = []
    for layer_idx, path, _attn in attention_layers(model):
        parent = path.rsplit(".", 1)[0] if "." in path else ""
        if parent in named:
            out.append((layer_idx, named[parent]))
    return out


class OutlierStats:
    """Per layer: max |x| (all positions / position 0 excluded, and where), mean kurtosis."""

    def __init__(self, model: nn.Module) -> None:
        self.layers_ = decoder_layers(model)
        self.max_all: dict[int, float] = {}
        self.max_excl: dict[int, float] = {}
        self.max_pos: dict[int, int] = {}
        self.kurt_sum: dict[int, float] = {}
        self.kurt_n: dict[int, int] = {}

    @contextlib.contextmanager
    def capture(self) -> Iterator["OutlierStats"]:
        handles = [layer.register_forward_hook(self._hook(idx)) for idx, layer in self.layers_]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    def _hook(self, layer_idx: int):
        def hook(module, args, output):
            hidden = output[0] if isinstance(output, (tuple, list)) else output
            self.update(layer_idx, hidden)
        return hook

    @torch.no_grad()
    def update(self, layer_idx: int, hidden: torch.Tensor) -> None:
        """hidden [B, T, D]."""
        a = hidden.detach().float().abs().amax(-1)  # [B, T]
        m, pos = a.max(-1)
        if m.max().item() > self.max_all.get(layer_idx, -1.0):
            b = int(m.argmax())
            self.max_all[layer_idx] = float(m[b])
            self.max_pos[layer_idx] = int(pos[b])
        if a.shape[1] > 1:
            self.max_excl[layer_idx] = max(self.max_excl.get(layer_idx, 0.0), float(a[:, 1:].max()))
        k = kurtosis(hidden.detach())  # [B, T]
        self.kurt_sum[layer_idx] = self.kurt_sum.get(layer_idx, 0.0) + float(k.sum())
        self.kurt_n[layer_idx] = self.kurt_n.get(layer_idx, 0) + k.numel()

    def layers(self) -> list[int]:
        return sorted(self.max_all)

    def kurtosis_per_layer(self) -> list[float]:
        return [self.kurt_sum[l] / self.kurt_n[l] for l in self.layers()]
