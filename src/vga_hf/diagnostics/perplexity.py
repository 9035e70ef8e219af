"""Perplexity over strided windows (Hugging Face's strided evaluation; spec section 3)."""

from __future__ import annotations

import math

import torch


def window_nll(logits: torch.Tensor, ids: torch.Tensor, n_context: int) -> tuple[float, int]:
    """Summed next-token NLL of one window and the number of targets scored.

    `logits` [1, T, V], `ids` [T]. Targets are ids[1:]; a target at position p (1 <= p < T) is scored
    when p >= n_context (the earlier ones were scored by the previous window)."""
    logp = torch.log_softmax(logits[0, :-1].float(), dim=-1)
    targets = ids[1:].to(logp.device)
    nll = -logp.gather(-1, targets[:, None])[:, 0]
    first = max(n_context, 1) - 1  # index into targets of position max(n_context, 1)
    scored = nll[first:]
    return float(scored.sum()), int(scored.numel())


def perplexity(total_nll: float, n_tokens: int) -> float:
    return math.exp(total_nll / max(n_tokens, 1))
