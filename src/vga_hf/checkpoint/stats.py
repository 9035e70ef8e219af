"""Read a saved checkpoint (full or gates-only) without building the model: VGA configuration and
per-layer gate statistics (what `vga-hf info` prints)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import torch

from ..config import VGAConfig
from ..patch import CONFIG_ATTR
from .files import check_safetensors_folder
from .save import GATES_CONFIG

_LAYER = re.compile(r"(?:^|\.)(\d+)\.")


def read_vga_config(folder: str | Path) -> tuple[VGAConfig | None, dict[str, Any]]:
    """(VGAConfig or None for a vanilla checkpoint, the raw config dict) of a checkpoint or gates folder."""
    folder = Path(folder)
    for name, key in (("config.json", CONFIG_ATTR), (GATES_CONFIG, "vga_config")):
        path = folder / name
        if path.is_file():
            data = json.loads(path.read_text(encoding="utf-8"))
            return (VGAConfig.from_dict(data[key]) if data.get(key) else None), data
    raise FileNotFoundError(f"{folder} holds neither config.json nor {GATES_CONFIG}: not a checkpoint folder.")


def gate_statistics(folder: str | Path) -> list[dict[str, Any]]:
    """One row per gated layer: gate tensor shapes, weight norms, bias, and the gate value at zero input
    `s * sigmoid(b)` (1.0 for every head of an untrained default gate)."""
    from safetensors import safe_open

    config, _ = read_vga_config(folder)
    scale = config.scale if config is not None else 1.0
    tensors: dict[int, dict[str, torch.Tensor]] = {}
    for name in check_safetensors_folder(folder):
        with safe_open(str(Path(folder) / name), framework="pt") as f:
            for key in f.keys():
                if not (".vga_gate." in f".{key}" or (key.startswith("layers.") and name.startswith("vga_gates"))):
                    continue
                match = _LAYER.search(key)
                layer = int(match.group(1)) if match else -1
                tensors.setdefault(layer, {})[key.rsplit(".", 1)[-1]] = f.get_tensor(key).float()
    rows = []
    for layer, parts in sorted(tensors.items()):
        w, b = parts.get("weight"), parts.get("bias")
        g0 = scale * torch.sigmoid(b) if b is not None else None
        rows.append({
            "layer": layer,
            "weight_shape": list(w.shape) if w is not None else None,
            "weight_norm": float(w.norm()) if w is not None else math.nan,
            "weight_max_abs": float(w.abs().max()) if w is not None and w.numel() else math.nan,
            "bias_mean": float(b.mean()) if b is not None else math.nan,
            "gate0_mean": float(g0.mean()) if g0 is not None else math.nan,
            "gate0_min": float(g0.min()) if g0 is not None else math.nan,
            "gate0_max": float(g0.max()) if g0 is not None else math.nan,
        })
    return rows
