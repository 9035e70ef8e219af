"""Extra training losses for a retrofit that dissolves existing sinks (issue 7).

- `SinkPenalty`: per head, the largest average attention that any single key receives across the
  queries that can see it (`max_k alpha_k`, the column mean of the causal attention map, over keys
  seen by at least half of the queries), averaged over layers, heads and sequences. A sink (a key
  most queries park on) scores near 1; a copying head that attends sharply to a different key for
  each query scores near 1/T. Any key counts, so a sink that moves to another token is penalised.
- `distillation_loss`: KL(teacher || student) of the next-token distributions, teacher = the frozen
  original model; exactly 0 while the student computes what the teacher computes.

Cost of the sink penalty: the model keeps its own attention backend (sdpa, flash, ...) for the
forward; `attention_probe(differentiable=True)` recomputes softmax(q k^T) beside it, i.e. one extra
eager attention per layer (2*B*H*T^2*head_dim FLOPs forward, twice that backward) and one
[B, H, T, T] float32 map per layer kept until backward (SmolLM2-135M, 4 x 128 tokens: 2.4 MB per
layer, 71 MB in all).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from ..diagnostics.attention import attention_probe, max_key_attention


def sink_score(probs: torch.Tensor, min_queries_frac: float = 0.5) -> torch.Tensor:
    """[B, H, Tq, Tk] attention probabilities -> [B, H] largest key importance (differentiable)."""
    values, _ = max_key_attention(probs, min_queries_frac)
    return values


class SinkPenalty:
    """Collects the sink score of every layer during a forward (any attention backend).

        penalty = SinkPenalty(model)
        with penalty.capture():
            out = model(input_ids, labels=input_ids)
        loss = out.loss + weight * penalty.value()
    """

    def __init__(self, model: nn.Module, layers: list[int] | None = None, min_queries_frac: float = 0.5) -> None:
        self.model = model
        self.layers = layers
        self.min_queries_frac = min_queries_frac
        self._scores: list[torch.Tensor] = []

    def _collect(self, layer_idx: int, probs: torch.Tensor) -> None:
        self._scores.append(sink_score(probs, self.min_queries_frac).mean())

    @contextlib.contextmanager
    def capture(self):
        self._scores = []
        with attention_probe(self.model, self._collect, differentiable=True, layers=self.layers):
            yield self

    def value(self) -> torch.Tensor:
        """Mean sink score over the captured layers (and heads, and sequences); consumes them."""
        if not self._scores:
            raise RuntimeError("SinkPenalty.value(): no attention was captured; run the forward inside "
                               "`with penalty.capture():`.")
        scores, self._scores = self._scores, []
        return torch.stack(scores).mean()


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over tokens of KL(p_teacher || p_student), in float32. [B, T, V] x2 -> scalar.
    Exactly zero when the logits are equal."""
    log_s = F.log_softmax(student_logits.float(), dim=-1)
    log_t = F.log_softmax(teacher_logits.detach().float(), dim=-1)
    kl = (log_t.exp() * (log_t - log_s)).sum(-1)  # [B, T]
    if mask is not None:
        return (kl * mask).sum() / mask.sum().clamp(min=1)
    return kl.mean()
