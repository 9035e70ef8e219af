"""The model card (README.md with YAML metadata) written into every saved checkpoint."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from ..architectures import model_type_of
from ..patch import unwrap_peft, gate_parameters, get_gates, get_vga_config

CARD_NAME = "README.md"
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _builtin(value: Any) -> Any:
    """Metrics as plain JSON/YAML values (numpy / torch scalars -> float)."""
    if isinstance(value, dict):
        return {str(k): _builtin(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_builtin(v) for v in value]
    if isinstance(value, (str, bool, int)) or value is None:
        return value
    if hasattr(value, "item"):
        value = value.item()
    value = float(value)
    return value if math.isfinite(value) else str(value)


def card_metadata(model: nn.Module, base_model: str | None = None, metrics: dict | None = None) -> dict[str, Any]:
    base = unwrap_peft(model)
    config = getattr(base, "config", None)
    model_type = model_type_of(config) if config is not None else ""
    vga = get_vga_config(model)
    if base_model is None:  # the name the model was loaded from, when it is a Hub id
        name = getattr(config, "_name_or_path", "") or ""
        base_model = name if _HUB_ID.fullmatch(name) and not os.path.exists(name) else None
    meta: dict[str, Any] = {"library_name": "transformers"}
    if base_model:
        meta["base_model"] = base_model
    meta["tags"] = ["vga", "vga_hf", "value-state-gated-attention"] + ([model_type] if model_type else [])
    if vga is None:
        meta["tags"] = ["vga_hf", "vga-baseline"] + ([model_type] if model_type else [])
    meta["pipeline_tag"] = "text-generation"
    meta["vga"] = {
        "config": vga.to_dict() if vga is not None else None,
        "gated_layers": sorted(get_gates(model)),
        "gate_parameters": int(sum(p.numel() for p in gate_parameters(model))),
    }
    if metrics:
        meta["vga"]["metrics"] = _builtin(dict(metrics))
    return meta


def model_card_text(model: nn.Module, base_model: str | None = None, metrics: dict | None = None) -> str:
    meta = card_metadata(model, base_model, metrics)
    vga = meta["vga"]
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).rstrip(), "---", ""]
    title = f"{base_model or meta.get('base_model') or 'Model'} with Value-State Gated Attention"
    if vga["config"] is None:
        title = f"{base_model or meta.get('base_model') or 'Model'} (baseline, no VGA gates)"
    lines += [f"# {title}", ""]
    if vga["config"] is not None:
        lines += [
            "Every decoder self-attention layer listed below multiplies each token's value vector by a gate "
            "computed from that value, `g = s * sigmoid(W v + b)`, before the KV cache and attention "
            "(Value-State Gated Attention, Bu et al., arXiv 2510.09017), added with the vga_hf library.",
            "",
            "## Load",
            "",
            "```python",
            "# with vga_hf installed",
            "import vga_hf",
            'model = vga_hf.from_pretrained("<this folder or repo>")',
            "# without vga_hf: the code is in modeling_vga.py next to the weights",
            "from transformers import AutoModelForCausalLM",
            'model = AutoModelForCausalLM.from_pretrained("<this folder or repo>", trust_remote_code=True)',
            "```",
            "",
            "Plain transformers without vga_hf and without `trust_remote_code` refuses this checkpoint "
            "(model type `vga_*`), rather than loading it without its gates.",
            "",
            "## VGA configuration",
            "",
            "| option | value |",
            "|---|---|",
        ]
        lines += [f"| {k} | `{json.dumps(v)}` |" for k, v in vga["config"].items()]
        lines += ["", f"Gated layers: {vga['gated_layers']} ({vga['gate_parameters']:,} gate parameters).", ""]
    if meta["vga"].get("metrics"):
        lines += ["## Metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {json.dumps(v) if isinstance(v, (dict, list)) else v} |"
                  for k, v in meta["vga"]["metrics"].items()]
        lines.append("")
    return "\n".join(lines)


def write_model_card(folder: str | os.PathLike, model: nn.Module, base_model: str | None = None,
                     metrics: dict | None = None) -> Path:
    path = Path(folder) / CARD_NAME
    path.write_text(model_card_text(model, base_model, metrics), encoding="utf-8")
    return path


def read_card_metadata(folder: str | os.PathLike) -> dict[str, Any]:
    """The YAML metadata of a saved model card."""
    text = (Path(folder) / CARD_NAME).read_text(encoding="utf-8")
    if not text.startswith("---\n"):
        raise ValueError(f"{folder}/{CARD_NAME} has no YAML metadata block.")
    return yaml.safe_load(text[4:text.index("\n---", 4)])
