"""Value-state drain and gate statistics (spec section 3), streamed over samples.

Value drain of layer l, kv head h: `|v_0| / mean_{j>=1} |v_j|` (L2 norm of the head's value
vector), before the gate (the value projection's output) and after it (`g * v`, what attention
reads). A drained first token has a ratio well below 1. For an unpatched model both are equal.

Values are read from the gates' own recording (`gate.record = True`) on patched layers, and from a
forward hook on the value site (`vga_hf.architectures`) on layers without a gate.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from ..patch import unwrap_peft
from ..architectures import find_value_sites, model_type_of
from ..patch import get_gates

GATE_BINS = 40


def drain_ratio(norms: torch.Tensor) -> torch.Tensor:
    """[B, T, n_kv] value norms -> [B, n_kv] ratio |v_0| / mean_{j>=1} |v_j|."""
    return norms[:, 0] / norms[:, 1:].mean(1).clamp_min(1e-12)


class ValueStats:
    """Per-(layer, kv head) drain ratios before/after the gate, gate means on the first token vs the
    rest, and a histogram of gate values (first token / others), summed over samples."""

    def __init__(self, model: nn.Module) -> None:
        base = unwrap_peft(model)
        self.sites = []
        for i, (path, attn, site) in enumerate(find_value_sites(base, model_type_of(getattr(base, "config", None)))):
            idx = getattr(attn, "layer_idx", None)
            self.sites.append((i if idx is None else int(idx), attn, site))
        self.gates = get_gates(model)
        self.scale = max((g.scale for g in self.gates.values()), default=2.0)
        self.edges = torch.linspace(0.0, self.scale, GATE_BINS + 1, dtype=torch.float64)
        self.sums: dict[int, dict[str, torch.Tensor]] = {}
        self.count: dict[int, int] = {}
        self.hist_first = torch.zeros(GATE_BINS, dtype=torch.float64)
        self.hist_rest = torch.zeros(GATE_BINS, dtype=torch.float64)
        self._captured: dict[int, torch.Tensor] = {}

    @contextlib.contextmanager
    def capture(self) -> Iterator["ValueStats"]:
        """Inside: every forward records values; call `collect()` after each forward."""
        handles, recorded = [], []
        try:
            for layer_idx, attn, site in self.sites:
                gate = self.gates.get(layer_idx)
                if gate is not None and getattr(attn, "vga_gate", None) is gate:
                    recorded.append((gate, gate.record))
                    gate.record = True
                else:
                    module = getattr(attn, site.value_attr)
                    handles.append(module.register_forward_hook(self._hook(layer_idx, site)))
            yield self
        finally:
            for h in handles:
                h.remove()
            for gate, was in recorded:
                gate.record = was
                if not was:
                    gate.last_gate = gate.last_value = None

    def _hook(self, layer_idx: int, site):
        def hook(module, args, output):
            if site.heads_layout:
                v = output.reshape(*output.shape[:-2], -1)
            elif site.start == 0 and site.stop is None:
                v = output
            else:
                v = output[..., site.start:site.stop]
            self._captured[layer_idx] = v.detach()
        return hook

    @torch.no_grad()
    def collect(self) -> None:
        """Reduce what the last forward recorded to statistics, and drop it."""
        for layer_idx, attn, site in self.sites:
            gate = self.gates.get(layer_idx)
            g = None
            if gate is not None and gate.record and gate.last_value is not None:
                v, g = gate.last_value, gate.last_gate
                gate.last_value = gate.last_gate = None
            else:
                v = self._captured.pop(layer_idx, None)
            if v is None or v.shape[1] < 2:
                continue
            v = v.float().reshape(*v.shape[:-1], site.num_kv_heads, site.head_dim)  # [B, T, n_kv, hd]
            norms = v.norm(dim=-1)
            stats = {"ungated": drain_ratio(norms)}
            if g is not None:
                g = g.float()  # [B, T, n_kv, per_head]
                stats["gated"] = drain_ratio((v * g).norm(dim=-1))
                gm = g.mean(-1)  # [B, T, n_kv]
                stats["gate_first"] = gm[:, 0]
                stats["gate_rest"] = gm[:, 1:].mean(1)
                self.hist_first += torch.histogram(g[:, 0].double().cpu().flatten().clamp(0, self.scale),
                                                   self.edges).hist
                self.hist_rest += torch.histogram(g[:, 1:].double().cpu().flatten().clamp(0, self.scale),
                                                  self.edges).hist
            else:
                stats["gated"] = stats["ungated"]
            acc = self.sums.setdefault(layer_idx, {})
            for name, value in stats.items():
                value = value.sum(0).double().cpu()
                acc[name] = acc[name] + value if name in acc else value
            self.count[layer_idx] = self.count.get(layer_idx, 0) + v.shape[0]

    def mean(self, name: str) -> list[list[float]] | None:
        """[layer][kv head] mean over samples (None when no layer has the statistic)."""
        layers = sorted(self.sums)
        if not layers or not any(name in self.sums[l] for l in layers):
            return None
        return [(self.sums[l][name] / self.count[l]).tolist() if name in self.sums[l] else None for l in layers]

    def layers(self) -> list[int]:
        return sorted(self.sums)
