"""Loading: `from_pretrained` (a VGA checkpoint, or a vanilla one patched on the way) and `load_gates`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn
from transformers import PreTrainedConfig

from ..config import FORMAT_VERSION, VGAConfig
from ..patch import CONFIG_ATTR, get_gates, is_patched, patch_model, unpatch_model
from .classes import _base_name, is_vga_model_type, vga_model_class
from .files import check_safetensors_file, check_safetensors_folder
from .register import register_vga_model_type
from .save import GATES_CONFIG, GATES_WEIGHTS, base_signature

_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")


def from_pretrained(pretrained_model_name_or_path: str | os.PathLike, vga_config: VGAConfig | dict | None = None,
                    **kwargs: Any) -> nn.Module:
    """Load a causal LM with its VGA gates.

    - A VGA checkpoint (saved from a patched model) loads with its gates; every gate tensor must be there.
    - A vanilla checkpoint loads as it is (no gates) when `vga_config` is None, and is patched on the way
      when `vga_config` is given (`VGAConfig()` for the defaults): its gates are then exactly at their
      initialisation (identity for the default configuration), never left uninitialised.
    Other keyword arguments go to transformers' `from_pretrained` (`dtype`, `attn_implementation`, ...).
    """
    source = pretrained_model_name_or_path
    if isinstance(source, (str, os.PathLike)) and os.path.isdir(source):
        check_safetensors_folder(os.path.join(source, kwargs.get("subfolder") or ""))
    hub = {k: kwargs[k] for k in _HUB_KWARGS if k in kwargs}
    config_dict, _ = PreTrainedConfig.get_config_dict(source, **hub)
    model_type = config_dict.get("model_type")
    if not model_type:
        raise ValueError(f"{source}/config.json has no model_type; it is not a transformers checkpoint.")
    base_type = model_type[len("vga_"):] if is_vga_model_type(model_type) else model_type
    config_class = register_vga_model_type(base_type)
    saved = config_dict.get(CONFIG_ATTR)
    if vga_config is not None:
        wanted = VGAConfig.from_dict(vga_config) if isinstance(vga_config, dict) else vga_config
        if saved and VGAConfig.from_dict(saved) != wanted:
            raise ValueError(f"{source} already holds gates of {VGAConfig.from_dict(saved)}; it cannot be loaded "
                             f"with vga_config={wanted}. Drop vga_config to load its own gates.")
    if not saved and vga_config is None:
        return transformers.AutoModelForCausalLM.from_pretrained(source, **kwargs)
    model_class = _model_class(config_dict, config_class)
    if saved:
        return model_class.from_pretrained(source, **kwargs)
    config = config_class.from_pretrained(source, **hub)
    setattr(config, CONFIG_ATTR, wanted.to_dict())
    return model_class.from_pretrained(source, config=config, vga_gates_in_checkpoint=False, **kwargs)


def _model_class(config_dict: dict, config_class: type) -> type:
    base_config = config_class._vga_base_config_class
    for name in config_dict.get("architectures") or []:
        cls = getattr(transformers, _base_name(name), None)
        if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
            return vga_model_class(cls)
    try:
        return vga_model_class(transformers.AutoModelForCausalLM._model_mapping[base_config])
    except KeyError:
        raise ValueError(f"transformers has no causal LM for {base_config.__name__}; vga_hf.from_pretrained "
                         "loads causal language models.") from None


# ---- gates only --------------------------------------------------------------------------------------
def read_gates_meta(folder: str | os.PathLike) -> dict[str, Any]:
    path = Path(folder) / GATES_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{folder} holds no {GATES_CONFIG}: it is not a gates folder written by "
                                "vga_hf.save_gates(model, folder).")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); save the gates again.") from None
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(f"{path} was written with vga_hf gate format version {version}, but the installed "
                         f"vga_hf reads versions <= {FORMAT_VERSION}. Upgrade vga_hf (pip install -U vga-hf).")
    return meta


def describe_mismatch(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Human-readable differences between two `base_signature`s (empty when they match)."""
    problems = []
    a, b = saved.get("layers", []), current.get("layers", [])
    if len(a) != len(b):
        problems.append(f"layer count: the gates were made for {len(a)} decoder attention layers, "
                        f"this model has {len(b)}")
    for field, label in (("num_kv_heads", "kv heads"), ("head_dim", "head size"), ("input_dim", "value input size")):
        diff = [(x["index"], x[field], y[field]) for x, y in zip(a, b) if x[field] != y[field]]
        if diff:
            idx, want, have = diff[0]
            where = f"layer {idx}" + (f" (and {len(diff) - 1} more layers)" if len(diff) > 1 else "")
            problems.append(f"{label}: the gates expect {want}, this model has {have} at {where}")
    return problems


def load_gates(model: nn.Module, folder: str | os.PathLike) -> nn.Module:
    """Patch `model` (a base model, possibly PEFT-wrapped) with the configuration saved by `save_gates`
    and load the gate tensors. A base model whose shape differs gets an error saying what differs."""
    from safetensors.torch import load_file

    meta = read_gates_meta(folder)
    config = VGAConfig.from_dict(meta["vga_config"])
    problems = describe_mismatch(meta.get("base", {}), base_signature(model))
    if problems:
        saved_from = meta.get("base_model") or "another model"
        raise ValueError(f"The gates in {folder} (from {saved_from}) do not fit this model: " + "; ".join(problems)
                         + ". Load them into the base model they were trained on.")
    weights = Path(folder) / GATES_WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"{folder} has {GATES_CONFIG} but no {GATES_WEIGHTS}; copy the whole folder.")
    check_safetensors_file(weights)
    tensors = load_file(str(weights))
    was_patched = is_patched(model)
    patch_model(model, config)
    try:
        _copy_gates(model, tensors, folder)
    except Exception:
        if not was_patched:
            unpatch_model(model)
        raise
    return model


@torch.no_grad()
def _copy_gates(model: nn.Module, tensors: dict[str, torch.Tensor], folder) -> None:
    params = {f"layers.{idx}.{name}": p for idx, gate in get_gates(model).items()
              for name, p in gate.named_parameters(recurse=False)}
    missing, unexpected = sorted(set(params) - set(tensors)), sorted(set(tensors) - set(params))
    if missing or unexpected:
        raise ValueError(f"{folder}/{GATES_WEIGHTS} does not match its configuration: "
                         + (f"missing gate tensors {missing}" if missing else "")
                         + ("; " if missing and unexpected else "")
                         + (f"unexpected tensors {unexpected}" if unexpected else "")
                         + ". Save the gates again with vga_hf.save_gates.")
    wrong = [f"{k}: {tuple(tensors[k].shape)} saved, {tuple(p.shape)} expected" for k, p in params.items()
             if tensors[k].shape != p.shape]
    if wrong:
        raise ValueError(f"{folder}/{GATES_WEIGHTS} has gate tensors of the wrong shape ({'; '.join(wrong[:4])}).")
    for key, param in params.items():
        param.copy_(tensors[key].to(device=param.device, dtype=param.dtype))
