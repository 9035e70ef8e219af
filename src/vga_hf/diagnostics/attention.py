"""Attention probabilities from any attention backend, and the sink metrics computed from them.

`attention_probe(model, callback)` is shared by the diagnostics and by training (the sink penalty
of the retrofit recipe). During a normal forward it calls `callback(layer_idx, probs)` once per
decoder self-attention layer with that layer's attention probabilities `probs` [B, H, Tq, Tk]
(float32, query heads; GQA keys are repeated), whatever backend the model was loaded with
(eager, sdpa, flex_attention, flash_attention_*):

    with attention_probe(model, lambda layer, p: stats.update(layer, p)):
        model(input_ids)

How: a function registered with `transformers.AttentionInterface` under the name
`"vga_probe|<backend>"` wraps the model's own backend. It calls that backend for the layer
output (so the forward computes exactly what it computed before, same kernel, same numbers) and
in addition computes `softmax(q k^T * scaling + mask)` for the callback. Only this model
instance is switched (the `_attn_implementation` of the configs its attention modules read),
and restored on exit. The attention-mask function registered for the wrapper is the original
backend's, so the wrapped backend receives exactly the mask it would have received.

Cost: one extra `q k^T` matmul and softmax per layer, i.e. what eager attention costs on top of
the backend (for T tokens and H heads, 2*B*H*T^2*head_dim FLOPs), and one [B, H, Tq, Tk] float32
map alive at a time (the callback should reduce it to statistics at once; nothing is kept
here). With `differentiable=False` the map is computed under `torch.no_grad()` and freed when the
callback returns. With `differentiable=True` it keeps its graph, so the maps the callback uses in
a loss stay alive until backward: memory of eager attention for those layers. Under gradient
checkpointing, the backward pass re-runs each layer's forward and so calls the callback again
during backward; a training callback should reset what it collects at the start of each step
(the extra calls come after the loss was formed, and what they add is simply dropped).

Mask handling for the probabilities: a 4-D float mask is added, a 4-D boolean mask is applied;
for anything else (None from sdpa's is_causal path, a flex BlockMask, a 2-D flash padding mask)
a causal mask is built from the shapes, with `sliding_window` when the layer passes one. This is
exact for unpadded sequences, which is what the diagnostics and the recipe feed.
"""

from __future__ import annotations

import contextlib
import math
import sys
from typing import Callable, Iterator

import torch
from torch import nn

from ..patch import unwrap_peft
from ..architectures import find_value_sites, model_type_of

PROBE_PREFIX = "vga_probe|"

ProbeCallback = Callable[[int, torch.Tensor], None]

# id(attention module) -> (callback, layer_idx, differentiable, original implementation name)
_ACTIVE: dict[int, tuple[ProbeCallback, int, bool, str]] = {}


def attention_layers(model: nn.Module) -> list[tuple[int, str, nn.Module]]:
    """[(layer_idx, path, attention module)] of the decoder self-attention layers of `model`."""
    base = unwrap_peft(model)
    sites = find_value_sites(base, model_type_of(getattr(base, "config", None)))
    out = []
    for i, (path, attn, _site) in enumerate(sites):
        idx = getattr(attn, "layer_idx", None)
        out.append((i if idx is None else int(idx), path, attn))
    return out


def _original_forward(module: nn.Module, impl: str) -> Callable:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if impl == "eager" or impl not in ALL_ATTENTION_FUNCTIONS:
        eager = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
        return eager if eager is not None else generic_eager_attention
    return ALL_ATTENTION_FUNCTIONS[impl]


def attention_probs(module: nn.Module, query: torch.Tensor, key: torch.Tensor, attention_mask,
                    scaling: float | None = None, softcap: float | None = None,
                    sliding_window: int | None = None, s_aux: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T * scaling + mask) in float32: [B, H, Tq, Tk] (GQA keys repeated)."""
    n_heads, n_kv = query.shape[1], key.shape[1]
    if n_heads != n_kv:
        key = key.repeat_interleave(n_heads // n_kv, dim=1)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    scores = torch.matmul(query.float(), key.float().transpose(-1, -2)) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    tq, tk = scores.shape[-2:]
    if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 4:
        mask = attention_mask[..., :tk]
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask.float()
    else:
        q_pos = torch.arange(tk - tq, tk, device=scores.device)[:, None]
        k_pos = torch.arange(tk, device=scores.device)[None, :]
        allowed = k_pos <= q_pos
        if sliding_window:
            allowed = allowed & (q_pos - k_pos < int(sliding_window))
        scores = scores.masked_fill(~allowed, float("-inf"))
    if s_aux is not None:  # learned per-head sink logits (gpt-oss): part of the softmax, not a key
        sink = s_aux.float().reshape(1, -1, 1, 1).expand(scores.shape[0], -1, tq, 1)
        return torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :tk]
    return torch.softmax(scores, dim=-1)


def generic_eager_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            attention_mask, scaling: float | None = None, dropout: float = 0.0, **kwargs):
    """Eager attention for modules whose modeling file has no `eager_attention_forward`:
    (output [B, Tq, H, D], probs [B, H, Tq, Tk])."""
    probs = attention_probs(module, query, key, attention_mask, scaling=scaling, softcap=kwargs.get("softcap"),
                            sliding_window=kwargs.get("sliding_window"), s_aux=kwargs.get("s_aux")).to(query.dtype)
    probs = nn.functional.dropout(probs, p=dropout, training=module.training)
    n_heads, n_kv = query.shape[1], value.shape[1]
    if n_heads != n_kv:
        value = value.repeat_interleave(n_heads // n_kv, dim=1)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs


def _probe_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                   attention_mask, *args, **kwargs):
    entry = _ACTIVE.get(id(module))
    impl = module.config._attn_implementation
    impl = impl[len(PROBE_PREFIX):] if impl and impl.startswith(PROBE_PREFIX) else impl
    if entry is not None:
        impl = entry[3]
    result = _original_forward(module, impl)(module, query, key, value, attention_mask, *args, **kwargs)
    if entry is None:  # an attention module of this model that is not probed (e.g. cross-attention)
        return result
    callback, layer_idx, differentiable, _ = entry
    scaling = kwargs.get("scaling", args[1] if len(args) > 1 else None)
    with contextlib.nullcontext() if differentiable else torch.no_grad():
        probs = attention_probs(module, query, key, attention_mask, scaling=scaling,
                                softcap=kwargs.get("softcap"), sliding_window=kwargs.get("sliding_window"),
                                s_aux=kwargs.get("s_aux"))
    callback(layer_idx, probs)
    del probs
    return result


def _register(impl: str) -> str:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    name = PROBE_PREFIX + impl
    if name not in AttentionInterface._global_mapping:
        AttentionInterface.register(name, _probe_forward)
    mask_fn = ALL_MASK_ATTENTION_FUNCTIONS._global_mapping.get(impl)
    if mask_fn is not None and name not in AttentionMaskInterface._global_mapping:
        AttentionMaskInterface.register(name, mask_fn)
    return name


@contextlib.contextmanager
def attention_probe(model: nn.Module, callback: ProbeCallback, differentiable: bool = False,
                    layers: list[int] | None = None) -> Iterator[nn.Module]:
    """Call `callback(layer_idx, probs [B, H, Tq, Tk])` for each decoder self-attention layer during
    every forward inside the `with` block, whatever the model's attention backend. `layers`
    restricts the probe to some layer indices (the others run their backend alone). See the module
    docstring for cost and memory. Not re-entrant on the same model."""
    entries = attention_layers(model)
    if not entries:
        raise ValueError("attention_probe: no decoder self-attention layers found in this model.")
    wanted = None if layers is None else set(layers)
    configs: dict[int, object] = {}
    for layer_idx, _path, attn in entries:
        if id(attn) in _ACTIVE:
            raise RuntimeError("attention_probe is already active on this model (not re-entrant).")
        cfg = getattr(attn, "config", None)
        if cfg is None:
            raise ValueError(f"attention_probe: {type(attn).__name__} has no config; cannot switch its backend.")
        configs[id(cfg)] = cfg
    saved = {key: cfg._attn_implementation for key, cfg in configs.items()}
    try:
        for key, cfg in configs.items():
            impl = saved[key] or "eager"
            cfg._attn_implementation_internal = _register(impl)
        for layer_idx, _path, attn in entries:
            if wanted is None or layer_idx in wanted:
                _ACTIVE[id(attn)] = (callback, layer_idx, differentiable, saved[id(attn.config)] or "eager")
        yield model
    finally:
        for _layer_idx, _path, attn in entries:
            _ACTIVE.pop(id(attn), None)
        for key, cfg in configs.items():
            cfg._attn_implementation_internal = saved[key]


# ---- metrics on one attention map ------------------------------------------------------------
def _visible_queries(tq: int, tk: int, device) -> torch.Tensor:
    """How many queries see each key under a causal mask: [Tk]."""
    offset = tk - tq
    k = torch.arange(tk, device=device)
    return (tq - (k - offset).clamp(min=0)).clamp(min=1)


def first_token_attention(probs: torch.Tensor) -> torch.Tensor:
    """A0 = mean over queries i >= 1 of a_i0 (spec section 3): [B, H, Tq, Tk] -> [B, H]."""
    if probs.shape[-2] < 2:
        raise ValueError("first_token_attention needs at least 2 tokens.")
    return probs[..., 1:, 0].mean(-1)


def position_attention(probs: torch.Tensor, position: int) -> torch.Tensor:
    """Mean over queries i > position of a_{i,position} (A0 for position 0): [B, H]."""
    return probs[..., position + 1:, position].mean(-1)


def key_importance(probs: torch.Tensor) -> torch.Tensor:
    """alpha_k = mean over the queries that can see key k of a_ik (Gu et al. 2024; spec section 3),
    i.e. the column mean of the causal attention map: [B, H, Tq, Tk] -> [B, H, Tk]. Differentiable."""
    tq, tk = probs.shape[-2:]
    return probs.sum(-2) / _visible_queries(tq, tk, probs.device).to(probs.dtype)


def max_key_attention(probs: torch.Tensor, min_queries_frac: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Per head, the largest alpha_k over keys seen by at least `min_queries_frac` of the queries,
    and that key's position: ([B, H] values, [B, H] positions). A sink anywhere, not only at 0.

    Keys near the end are seen by few queries, so their column mean says little (the last key's is
    a single attention weight; a head that attends to the current token would look like a sink
    there); `min_queries_frac` keeps the keys with enough queries to average over."""
    alpha = key_importance(probs)
    tq, tk = probs.shape[-2:]
    n_keys = max(1, min(tk, int(math.floor(tk - tq + tq * (1 - min_queries_frac))) + 1))
    values, index = alpha[..., :n_keys].max(-1)
    return values, index


def sink_flags(probs: torch.Tensor, eps: float = 0.3, position: int = 0) -> torch.Tensor:
    """alpha_position > eps per head: [B, H] bool (sink rate = mean of this, in %)."""
    return key_importance(probs)[..., position] > eps


class AttentionStats:
    """Streaming per-(layer, head) attention statistics over samples; memory O(layers * heads).

    `update(layer_idx, probs)` reduces one [B, H, Tq, Tk] map at once (each batch row is a sample)."""

    def __init__(self, eps: float = 0.3, min_queries_frac: float = 0.5) -> None:
        self.eps = eps
        self.min_queries_frac = min_queries_frac
        self.sums: dict[int, dict[str, torch.Tensor]] = {}
        self.counts: dict[int, int] = {}
        self.argmax_hist: dict[int, list[dict[int, int]]] = {}

    def __call__(self, layer_idx: int, probs: torch.Tensor) -> None:
        self.update(layer_idx, probs)

    @torch.no_grad()
    def update(self, layer_idx: int, probs: torch.Tensor) -> None:
        probs = probs.detach().float()
        alpha = key_importance(probs)  # [B, H, Tk]
        mka, mka_pos = max_key_attention(probs, self.min_queries_frac)
        stats = {
            "first_token_attention": first_token_attention(probs),
            "alpha_first": alpha[..., 0],
            "sink": (alpha[..., 0] > self.eps).float(),
            "second_token_attention": position_attention(probs, 1) if probs.shape[-1] > 2
            else torch.zeros_like(alpha[..., 0]),
            "max_key_attention": mka,
            "max_key_sink": (mka > self.eps).float(),
            "max_key_is_first": (mka_pos == 0).float(),
        }
        acc = self.sums.setdefault(layer_idx, {})
        for name, value in stats.items():
            value = value.sum(0).cpu().double()  # over samples -> [H]
            acc[name] = acc[name] + value if name in acc else value
        self.counts[layer_idx] = self.counts.get(layer_idx, 0) + probs.shape[0]
        hist = self.argmax_hist.setdefault(layer_idx, [dict() for _ in range(probs.shape[1])])
        for row in mka_pos.cpu().tolist():
            for h, pos in enumerate(row):
                hist[h][pos] = hist[h].get(pos, 0) + 1

    def layers(self) -> list[int]:
        return sorted(self.sums)

    def mean(self, name: str) -> list[list[float]]:
        """[layer][head] mean over samples of statistic `name`."""
        return [(self.sums[l][name] / self.counts[l]).tolist() for l in self.layers()]

    def modal_max_key_position(self) -> list[list[int]]:
        """[layer][head] the key position most often holding the head's largest column mean."""
        return [[max(h.items(), key=lambda kv: (kv[1], -kv[0]))[0] for h in self.argmax_hist[l]]
                for l in self.layers()]
