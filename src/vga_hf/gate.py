"""The gate math, and nothing else (spec section 1).

    g_j = s * sigmoid(W u_j + b)        u_j = v_j (VGA) or x_j (IGA)
    v_j <- g_j * v_j                    (position "value": before the KV cache and attention)

Shapes: `v` is the value projection's output for the current tokens, flattened over heads:
[..., n_kv * head_dim]. The gate is [..., n_kv, 1] (granularity "head") or [..., n_kv, head_dim]
(granularity "element"); with GQA/MQA the query heads of a group share their kv head's gate.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import VGAConfig


class ValueGate(nn.Module):
    """Parameters and forward of one layer's value gate.

    Not an `nn.Linear` on purpose: transformers' `_init_weights` re-initialises Linear modules
    in from_pretrained paths, and these parameters must stay exactly at their init.
    """

    def __init__(
        self,
        config: VGAConfig,
        num_kv_heads: int,
        head_dim: int,
        input_dim: int | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.granularity = config.granularity
        self.gate_input = config.gate_input
        self.scale = float(config.scale)
        self.num_kv_heads = int(num_kv_heads)
        self.head_dim = int(head_dim)
        self.per_head = 1 if config.granularity == "head" else self.head_dim
        n_out = self.num_kv_heads * self.per_head
        if config.gate_input == "head_value":
            # block-diagonal: each kv head reads its own value only.  [n_kv, per_head, head_dim]
            shape = (self.num_kv_heads, self.per_head, self.head_dim)
        elif config.gate_input == "input":
            if input_dim is None:
                raise ValueError("gate_input='input' needs the layer input size (input_dim).")
            shape = (n_out, int(input_dim))  # [n_out, d_model]
        else:
            shape = (n_out, self.num_kv_heads * self.head_dim)  # [n_out, n_kv*head_dim]
        factory = {"dtype": dtype, "device": device}
        self.weight = nn.Parameter(torch.zeros(shape, **factory))
        self.bias = nn.Parameter(torch.full((n_out,), float(config.bias_init), **factory))
        self._init = (float(config.weight_init_std), float(config.bias_init))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        std, bias = self._init
        if std > 0:
            self.weight.normal_(0.0, std)
        else:
            self.weight.zero_()
        self.bias.fill_(bias)

    def extra_repr(self) -> str:
        return (f"granularity={self.granularity}, gate_input={self.gate_input}, n_kv={self.num_kv_heads}, "
                f"head_dim={self.head_dim}, scale={self.scale}")

    def gate(self, value: torch.Tensor, layer_input: torch.Tensor | None = None) -> torch.Tensor:
        """Gate values g for the tokens of `value` [..., n_kv*hd] -> [..., n_kv, per_head]."""
        lead = value.shape[:-1]
        if self.gate_input == "head_value":
            v = value.reshape(*lead, self.num_kv_heads, self.head_dim)  # [..., n_kv, hd]
            logit = torch.einsum("...hd,hod->...ho", v, self.weight)  # [..., n_kv, per_head]
            logit = logit + self.bias.view(self.num_kv_heads, self.per_head)
        else:
            if self.gate_input == "input":
                if layer_input is None:
                    raise RuntimeError("gate_input='input' (IGA) needs the layer input; none was captured.")
                u = layer_input
            elif self.gate_input == "value_normalized":
                vf = value.float()
                u = (vf * torch.rsqrt(vf.pow(2).mean(-1, keepdim=True) + 1e-6)).to(value.dtype)
            else:
                u = value
            logit = nn.functional.linear(u, self.weight, self.bias)  # [..., n_out]
            logit = logit.view(*lead, self.num_kv_heads, self.per_head)
        return self.scale * torch.sigmoid(logit)

    def forward(
        self, value: torch.Tensor, layer_input: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (gated value [..., n_kv*hd], gate [..., n_kv, per_head])."""
        g = self.gate(value, layer_input)
        lead = value.shape[:-1]
        gated = (value.reshape(*lead, self.num_kv_heads, self.head_dim) * g).reshape(value.shape)
        return gated, g


def expand_gate_to_query_heads(g: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[..., n_kv, per_head] -> [..., n_heads, per_head]: query heads of a GQA group share a gate."""
    return g.repeat_interleave(num_heads // g.shape[-2], dim=-2)
