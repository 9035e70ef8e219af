"""Pieces of VGA fine-tuning shared by the retrofit recipe and the training benchmark.

- `setup_trainable(model, mode, ...)`: what trains (`gates`, `gates+lora`, `full`), with or without VGA.
- `optimizer_param_groups(model, lr, gate_lr, ...)`: gates get their own learning rate.
- `lr_multiplier(step, warmup, total, schedule)`: warmup then constant / linear / cosine.
- `gate_stats(model, blocks)`: how far the gates moved from their initial value.
- `summary_table(columns)`: the before/after markdown table.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch
from torch import nn

from ..architectures import find_value_sites, model_type_of
from ..config import VGAConfig
from ..patch import GATE_NAME, gate_parameters, get_gates, get_vga_config, is_patched, unwrap_peft

MODES = ("gates", "gates+lora", "full")
SCHEDULES = ("constant", "linear", "cosine")


def lora_target_modules(model: nn.Module) -> list[str]:
    """Full names of the projections inside every decoder self-attention module (q/k/v/o, or GPT-2's
    c_attn/c_proj, Phi-3's qkv_proj/o_proj), excluding the VGA gate. PEFT matches them exactly."""
    base = unwrap_peft(model)
    sites = find_value_sites(base, model_type_of(getattr(base, "config", None)))
    names = []
    for path, attn, _site in sites:
        for child_name, child in attn.named_children():
            if child_name == GATE_NAME:
                continue
            if isinstance(child, nn.Linear) or type(child).__name__ == "Conv1D":
                names.append(f"{path}.{child_name}" if path else child_name)
    if not names:
        raise ValueError(f"found no attention projections for LoRA in this {type(base).__name__}.")
    return names


def setup_trainable(model: nn.Module, mode: str, vga: bool = True, lora_r: int = 8, lora_alpha: int = 16,
                    lora_dropout: float = 0.0) -> nn.Module:
    """Set `requires_grad` for `mode`; returns the model to train (a `PeftModel` for `gates+lora`).

    `gates`: only the gates (needs VGA). `gates+lora`: LoRA on the attention projections, plus the
    gates when `vga`. `full`: every parameter (gates included when `vga`).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}.")
    if vga != is_patched(model):
        raise ValueError(f"vga={vga} but the model is {'' if is_patched(model) else 'not '}patched.")
    if mode == "gates":
        if not vga:
            raise ValueError("mode='gates' without VGA has nothing to train: use mode=full or mode=gates+lora "
                             "for a --no-vga control run (a gates-only run is compared with its 'before' column).")
        for p in model.parameters():
            p.requires_grad_(False)
        for p in gate_parameters(model):
            p.requires_grad_(True)
        return model
    if mode == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                        target_modules=lora_target_modules(model), bias="none",
                        fan_in_fan_out=model_type_of(getattr(unwrap_peft(model), "config", None)) == "gpt2")
    peft_model = get_peft_model(model, config)
    for p in gate_parameters(peft_model):  # PEFT froze everything that is not LoRA
        p.requires_grad_(True)
    return peft_model


def finalize_for_saving(model: nn.Module) -> nn.Module:
    """The plain transformers model to save: LoRA merged into the base weights (gates kept)."""
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    return model


def is_gate_parameter(name: str) -> bool:
    return f".{GATE_NAME}." in f".{name}"


def optimizer_param_groups(model: nn.Module, lr: float, gate_lr: float, weight_decay: float = 0.0,
                           gate_weight_decay: float = 0.0) -> list[dict[str, Any]]:
    """AdamW groups over the trainable parameters: `gates` (own lr), `decay` and `no_decay` (biases and
    norms) at `lr`. Empty groups are left out; each group has a `name`."""
    groups: dict[str, list] = {"gates": [], "decay": [], "no_decay": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if is_gate_parameter(name):
            groups["gates"].append(p)
        elif p.ndim < 2 or "norm" in name.lower():
            groups["no_decay"].append(p)
        else:
            groups["decay"].append(p)
    settings = {"gates": (gate_lr, gate_weight_decay), "decay": (lr, weight_decay), "no_decay": (lr, 0.0)}
    out = [{"name": k, "params": v, "lr": settings[k][0], "weight_decay": settings[k][1]}
           for k, v in groups.items() if v]
    if not out:
        raise ValueError("no trainable parameters.")
    return out


def lr_multiplier(step: int, warmup: int, total: int, schedule: str = "constant") -> float:
    """Factor on the peak lr at optimizer step `step` (0-based): linear warmup over `warmup` steps,
    then constant, linear decay to 0 or cosine decay to 0 at `total`."""
    if schedule not in SCHEDULES:
        raise ValueError(f"lr schedule must be one of {SCHEDULES}, got {schedule!r}.")
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 1.0 - progress if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


@torch.no_grad()
def gate_stats(model: nn.Module, blocks: Iterable[torch.Tensor] | None = None) -> dict[str, float]:
    """How far the gates moved from their initial value `g0 = scale * sigmoid(bias_init)`.

    Parameter view: largest |W| and |b - b0| over all gates. With `blocks` ([B, T] token ids), also the
    gate values on that text: mean and max |g - g0|, mean gate on position 0 and on the rest.
    Returns {} for a model without gates.
    """
    gates = get_gates(model)
    if not gates:
        return {}
    config = get_vga_config(model) or VGAConfig()
    g0 = config.scale / (1.0 + math.exp(-config.bias_init))
    stats = {
        "gate_param_max_abs_weight": max(float(g.weight.abs().max()) for g in gates.values()),
        "gate_param_max_abs_bias_shift": max(float((g.bias - config.bias_init).abs().max()) for g in gates.values()),
    }
    if blocks is None:
        return stats
    base = unwrap_peft(model)
    device = next(base.parameters()).device
    was_training = base.training
    base.eval()
    n, total_dev, max_dev, first, rest, n_first, n_rest = 0, 0.0, 0.0, 0.0, 0.0, 0, 0
    for gate in gates.values():
        gate.record = True
    try:
        for block in blocks:
            block = block.to(device)
            base(input_ids=block if block.ndim == 2 else block[None], use_cache=False)
            for gate in gates.values():
                g = gate.last_gate.float()  # [B, T, n_kv, per_head]
                g = g.reshape(g.shape[0], g.shape[1], -1)
                dev = (g - g0).abs()
                total_dev += float(dev.sum())
                n += dev.numel()
                max_dev = max(max_dev, float(dev.max()))
                first += float(g[:, 0].sum())
                n_first += g[:, 0].numel()
                rest += float(g[:, 1:].sum())
                n_rest += g[:, 1:].numel()
    finally:
        for gate in gates.values():
            gate.record = False
            gate.last_gate = gate.last_value = None
        base.train(was_training)
    stats.update({
        "gate_mean_abs_shift": total_dev / max(n, 1),
        "gate_max_abs_shift": max_dev,
        "gate_mean_first_token": first / max(n_first, 1),
        "gate_mean_other_tokens": rest / max(n_rest, 1),
    })
    return stats


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if value != value:  # NaN
        return "nan"
    a = abs(value)
    if a != 0 and (a >= 1e5 or a < 1e-3):
        return f"{value:.3g}"
    if a >= 100:
        return f"{value:,.1f}"
    return f"{value:.4g}"


def summary_table(columns: dict[str, dict[str, Any]], rows: list[str] | None = None,
                  labels: dict[str, str] | None = None) -> str:
    """A markdown table: one row per metric, one column per entry of `columns` (e.g. before/after),
    plus a `change` column when there are exactly two numeric columns."""
    names = list(columns)
    if rows is None:
        rows = []
        for col in columns.values():
            rows += [k for k in col if k not in rows]
    labels = labels or {}
    two = len(names) == 2
    header = "| metric | " + " | ".join(names) + (" | change |" if two else " |")
    lines = [header, "|---" * (len(names) + 1 + two) + "|"]
    for key in rows:
        values = [columns[n].get(key) for n in names]
        if all(v is None for v in values):
            continue
        cells = [_fmt(v) for v in values]
        if two:
            a, b = values
            numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
            cells.append(_fmt(b - a) if numeric else "")
        lines.append(f"| {labels.get(key, key)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
