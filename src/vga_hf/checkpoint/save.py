"""Saving: a whole checkpoint (`save_checkpoint`), or the gates alone (`save_gates`). Both atomic."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

from torch import nn

from ..architectures import find_value_sites, model_type_of
from ..config import FORMAT_VERSION
from ..patch import _select_layers, unwrap_peft, get_gates, get_vga_config, is_patched
from .atomic import atomic_directory
from .card import write_model_card

GATES_CONFIG = "vga_gates.json"
GATES_WEIGHTS = "vga_gates.safetensors"


def save_checkpoint(model: nn.Module, out_dir: str | os.PathLike, tokenizer=None, metrics: dict | None = None,
                    base_model: str | None = None, max_shard_size=None, safe_serialization: bool = True) -> Path:
    """Save `model` (patched or not), its tokenizer and a model card (README.md) to `out_dir`, atomically.

    A PEFT model is saved with its adapters merged (into a copy; `model` is left as it is). The saved
    weights are read back to check that every gate tensor is in them. `metrics` (name -> number) go
    into the card; `base_model` (a Hub id) too. Returns the folder.
    """
    if not safe_serialization:
        raise ValueError("vga_hf saves safetensors only (transformers 5 writes nothing else); "
                         "drop safe_serialization=False.")
    model = _plain_model(model)
    kwargs: dict[str, Any] = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    out_dir = Path(out_dir)
    with atomic_directory(out_dir) as tmp:
        model.save_pretrained(tmp, **kwargs)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        check_saved_gates(model, tmp)
        write_model_card(tmp, model, base_model=base_model, metrics=metrics)
    return out_dir


def _plain_model(model: nn.Module) -> nn.Module:
    """The transformers model to save; a PEFT model's adapters merged into a deep copy."""
    if callable(getattr(model, "merge_and_unload", None)):
        return copy.deepcopy(model).merge_and_unload()
    if not callable(getattr(model, "save_pretrained", None)):
        raise TypeError(f"save_checkpoint needs a transformers model, got {type(model).__name__}.")
    return unwrap_peft(model)


def saved_tensor_names(folder: str | os.PathLike) -> set[str]:
    from safetensors import safe_open

    names: set[str] = set()
    for path in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            names.update(f.keys())
    return names


def check_saved_gates(model: nn.Module, folder: str | os.PathLike) -> None:
    """Raise if a gate tensor of `model` did not make it into the weights saved in `folder`."""
    expected = {name for name in model.state_dict() if ".vga_gate." in f".{name}"}
    lost = sorted(expected - saved_tensor_names(folder))
    if lost:
        raise RuntimeError(f"vga_hf: the save lost {len(lost)} gate tensor(s) ({', '.join(lost[:4])}...); "
                           "nothing was written. Please report this with your transformers version.")


# ---- gates only ------------------------------------------------------------------------------------
def base_signature(model: nn.Module) -> dict[str, Any]:
    """What a gate file needs of its base model: attention layers and, per layer, kv heads, head size and
    the size of the value projection's input."""
    base = unwrap_peft(model)
    config = getattr(base, "config", None)
    sites = _select_layers(find_value_sites(base, model_type_of(config) if config is not None else ""), None)
    return {
        "model_type": model_type_of(config) if config is not None else "",
        "layers": [{"index": idx, "num_kv_heads": site.num_kv_heads, "head_dim": site.head_dim,
                    "input_dim": site.input_dim} for idx, (_, _, site) in sites],
    }


def save_gates(model: nn.Module, folder: str | os.PathLike, base_model: str | None = None) -> Path:
    """Write the gates of `model` alone (PEFT style): `vga_gates.json` (VGA configuration, shape of the
    base model) and `vga_gates.safetensors` (tensors `layers.<i>.weight` / `.bias`). Atomic."""
    from safetensors.torch import save_file

    if not is_patched(model):
        raise ValueError("The model has no VGA gates to save; call vga_hf.patch_model(model) first.")
    tensors = {f"layers.{idx}.{name}": param.detach().to("cpu").contiguous()
               for idx, gate in get_gates(model).items() for name, param in gate.named_parameters(recurse=False)}
    config = getattr(unwrap_peft(model), "config", None)
    meta = {
        "format_version": FORMAT_VERSION,
        "vga_config": get_vga_config(model).to_dict(),
        "base": base_signature(model),
        "base_model": base_model or getattr(config, "_name_or_path", None) or None,
        "dtype": str(next(iter(tensors.values())).dtype).replace("torch.", ""),
    }
    folder = Path(folder)
    with atomic_directory(folder) as tmp:
        save_file(tensors, str(tmp / GATES_WEIGHTS), metadata={"format": "pt"})
        (tmp / GATES_CONFIG).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return folder

