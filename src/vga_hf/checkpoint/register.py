"""Make transformers' Auto classes know every `vga_<base>` model type once vga_hf is imported.

Registration is lazy: `vga_<base>` is registered (config class, and the VGA model classes under
AutoModelForCausalLM, AutoModel, ...) the first time transformers asks whether it knows that type,
so it works for every base model type without importing all of transformers' modeling code.
"""

from __future__ import annotations

import warnings

import transformers
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from .classes import AUTO_CLASSES, MODEL_TYPE_PREFIX, vga_config_class, vga_model_class, vga_model_type


def register_vga_model_type(base_model_type: str) -> type:
    """Register `vga_<base_model_type>` with AutoConfig and the Auto model classes; returns the config class."""
    if base_model_type.startswith(MODEL_TYPE_PREFIX) or base_model_type not in CONFIG_MAPPING:
        raise ValueError(f"model type {base_model_type!r} is unknown to this transformers "
                         f"{transformers.__version__}; a VGA checkpoint of it cannot be loaded here. "
                         "Upgrade transformers, or load with trust_remote_code=True if the base model needs it.")
    base_config = CONFIG_MAPPING[base_model_type]
    config_class = vga_config_class(base_config)
    name = vga_model_type(base_model_type)
    if dict.get(CONFIG_MAPPING._extra_content, name) is not config_class:
        CONFIG_MAPPING.register(name, config_class, exist_ok=True)
    for auto_name in AUTO_CLASSES:
        auto = getattr(transformers, auto_name)
        try:
            base_model = auto._model_mapping[base_config]
        except (KeyError, ValueError):
            continue
        if isinstance(base_model, (tuple, list)):
            base_model = base_model[0]
        auto.register(config_class, vga_model_class(base_model), exist_ok=True)
    return config_class


class _LazyVGATypes(dict):
    """Replaces `CONFIG_MAPPING._extra_content`: `"vga_<base>" in CONFIG_MAPPING` registers it first."""

    def __contains__(self, key) -> bool:
        if (not dict.__contains__(self, key) and isinstance(key, str) and key.startswith(MODEL_TYPE_PREFIX)
                and not key[len(MODEL_TYPE_PREFIX):].startswith(MODEL_TYPE_PREFIX)
                and key[len(MODEL_TYPE_PREFIX):] in CONFIG_MAPPING):
            try:
                register_vga_model_type(key[len(MODEL_TYPE_PREFIX):])
            except Exception as err:  # pragma: no cover - a base type whose modeling code fails to import
                warnings.warn(f"vga_hf could not register {key!r}: {err}")
        return dict.__contains__(self, key)


def install() -> None:
    """Called on `import vga_hf`."""
    extra = getattr(CONFIG_MAPPING, "_extra_content", None)
    if isinstance(extra, _LazyVGATypes):
        return
    if type(extra) is dict:
        CONFIG_MAPPING._extra_content = _LazyVGATypes(extra)
        return
    # pragma: no cover - transformers changed its mapping internals: register the known types eagerly
    from ..architectures import ARCHITECTURES

    for model_type in ARCHITECTURES:
        try:
            register_vga_model_type(model_type)
        except Exception:
            pass
