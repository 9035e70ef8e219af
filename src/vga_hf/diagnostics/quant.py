"""Simulated W8A8 post-training quantization, the protocol of Bondarenko et al. 2023 (spec section 3).

- uniform affine quantization, per tensor, 8 bits;
- weights: symmetric, range from min-max (`scale = max|W| / 127`, integers in [-127, 127]);
- activations: the inputs of every linear layer except the LM head, asymmetric (`[0, 255]` with a
  zero point), static ranges from a running min-max with momentum 0.9 over calibration batches
  (first batch sets the range, then `r <- 0.9 r + 0.1 r_batch`); the range always contains 0.
  Calibration text must be disjoint from the evaluation text (the caller's job; the default
  corpus uses Macbeth to calibrate and Hamlet to evaluate).
- not quantized: the LM head (weight and input; with tied embeddings it is the embedding matrix),
  embeddings, norms, the attention softmax/matmuls, and VGA gate parameters (a `ValueGate` is
  not a linear layer), as in the protocol.

Why our own code and not a library: we found no maintained library that runs exactly this protocol
on CPU on an arbitrary transformers model. `torch.ao.quantization` (eager mode) needs model
rewriting with QuantStubs and is deprecated in favour of torchao; torchao's int8 CPU paths are
dynamic per-token activations / per-channel weights; optimum-quanto defaults to other observers
and per-axis weights. The quantity measured here is the damage that rounding to this grid does,
so simulated ("fake") quantization in float32 is what is needed: it reproduces integer-kernel
numerics of the same affine scheme up to float32 rounding of the dequantized values, needs no
int8 kernels, and works on every architecture (nn.Linear and GPT-2's Conv1D).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn


def quantize_symmetric(x: torch.Tensor, bits: int = 8) -> tuple[torch.Tensor, float]:
    """Fake-quantize `x` symmetric per tensor, range min-max: returns (dequantized x, scale).
    Round-trip error is at most scale / 2 per element."""
    qmax = 2 ** (bits - 1) - 1
    scale = float(x.detach().abs().max()) / qmax
    if scale == 0.0:
        return x.clone(), 0.0
    return torch.clamp(torch.round(x / scale), -qmax, qmax) * scale, scale


def affine_params(lo: float, hi: float, bits: int = 8) -> tuple[float, int]:
    """(scale, zero_point) of an asymmetric range [lo, hi] (extended to contain 0)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    qmax = 2 ** bits - 1
    scale = (hi - lo) / qmax
    if scale <= 0:
        return 1.0, 0
    zero_point = int(min(max(round(-lo / scale), 0), qmax))
    return scale, zero_point


def quantize_asymmetric(x: torch.Tensor, lo: float, hi: float, bits: int = 8) -> torch.Tensor:
    """Fake-quantize `x` with the static range [lo, hi]: round-trip error <= scale / 2 inside the range."""
    scale, zp = affine_params(lo, hi, bits)
    q = torch.clamp(torch.round(x / scale) + zp, 0, 2 ** bits - 1)
    return (q - zp) * scale


def quantizable_linears(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every nn.Linear / Conv1D-like 2-D weight layer except the LM head (the output embeddings)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    out = []
    for name, module in model.named_modules():
        if module is head or name.split(".")[-1] == "lm_head":
            continue
        is_linear = isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"
        if is_linear and isinstance(getattr(module, "weight", None), torch.Tensor) and module.weight.dim() == 2:
            out.append((name, module))
    return out


class W8A8:
    """Simulated W8A8 on a model, in place and reversible.

        q = W8A8(model)
        with q.calibrating():            # observe activation ranges, weights already quantized
            for ids in calib: model(ids)
        with q.quantized():              # weights and activations quantized
            evaluate(model)
        # on exit of each block the original weights are back
    """

    def __init__(self, model: nn.Module, momentum: float = 0.9, bits: int = 8) -> None:
        self.model = model
        self.momentum = momentum
        self.bits = bits
        self.linears = quantizable_linears(model)
        self.ranges: dict[str, tuple[float, float]] = {}
        self.weight_scales: dict[str, float] = {}

    @contextlib.contextmanager
    def _weights(self) -> Iterator[None]:
        saved = []
        try:
            with torch.no_grad():
                for name, module in self.linears:
                    w = module.weight
                    saved.append((w, w.data))
                    q, scale = quantize_symmetric(w.data, self.bits)
                    self.weight_scales[name] = scale
                    w.data = q
            yield
        finally:
            for w, data in saved:
                w.data = data

    def _observe(self, name: str):
        def hook(module, args):
            x = args[0].detach()
            lo, hi = float(x.min()), float(x.max())
            if name in self.ranges:
                old_lo, old_hi = self.ranges[name]
                m = self.momentum
                lo, hi = m * old_lo + (1 - m) * lo, m * old_hi + (1 - m) * hi
            self.ranges[name] = (lo, hi)
        return hook

    def _quantize_input(self, name: str):
        def hook(module, args):
            lo, hi = self.ranges[name]
            return (quantize_asymmetric(args[0], lo, hi, self.bits), *args[1:])
        return hook

    @contextlib.contextmanager
    def _with_input_hooks(self, make_hook) -> Iterator["W8A8"]:
        handles = [m.register_forward_pre_hook(make_hook(n)) for n, m in self.linears]
        try:
            with self._weights():
                yield self
        finally:
            for h in handles:
                h.remove()

    def calibrating(self):
        """Context: quantized weights, activations observed (running min-max) but not quantized."""
        return self._with_input_hooks(self._observe)

    def quantized(self):
        """Context: quantized weights and activations (needs calibrated ranges)."""
        missing = [n for n, _ in self.linears if n not in self.ranges]
        if missing:
            raise RuntimeError(f"W8A8: no calibrated range for {len(missing)} linear layers (e.g. {missing[0]}); "
                               "run calibration batches first.")
        return self._with_input_hooks(self._quantize_input)
