"""VGA classes for any transformers model type, made on demand: `VGA<Base>Config`, `VGA<Base>ForCausalLM`.

A VGA checkpoint says `model_type: "vga_<base>"` and `architectures: ["VGA<Base>ForCausalLM"]` in its
config.json, with an `auto_map` to the self-contained `modeling_vga.py` saved next to it. So:
- with vga_hf imported, transformers finds the `vga_<base>` type (registered on demand) and loads
  these classes: the model patches itself in `__init__` and gets its gate tensors from the weights;
- without vga_hf, `trust_remote_code=True` loads the same classes from `modeling_vga.py`;
- without both, transformers refuses the unknown model type: never a model silently lacking gates.

In memory nothing changes type: `config.model_type` stays the base's (`"llama"`), so PEFT, weight
conversions and vga_hf's architecture registry see the model they know. Only saving writes the VGA
form, and only while the config carries a `vga_config` (an unpatched model saves as the base).

This module (with config, gate, architectures, patch and files) is concatenated into `modeling_vga.py`,
so it imports nothing from vga_hf beyond those, and only the standard library, torch and transformers.
"""

from __future__ import annotations

import json
import os
import re
import sys
import warnings

import transformers

from ..config import VGAConfig
from ..patch import CONFIG_ATTR, GATE_NAME, PATCH_HOOKS, UNPATCH_HOOKS, PatchedValueGate, patch_model
from .files import check_safetensors_folder

VGA_PREFIX = "VGA"                 # class names: VGALlamaConfig, VGALlamaForCausalLM
MODEL_TYPE_PREFIX = "vga_"         # saved model_type: vga_llama
REMOTE_MODULE = "modeling_vga"     # the self-contained code file written into every VGA checkpoint
REMOTE_CODE_FILE = REMOTE_MODULE + ".py"
AUTO_CLASSES = ("AutoModelForCausalLM", "AutoModel", "AutoModelForSequenceClassification",
                "AutoModelForTokenClassification", "AutoModelForQuestionAnswering")
_TAIL_MARKER = "# ---- the classes of this checkpoint ----"
_BUNDLED = False  # set to True at the end of modeling_vga.py
_CONFIG_CLASSES: dict[type, type] = {}
_MODEL_CLASSES: dict[type, type] = {}


def vga_model_type(base_model_type: str) -> str:
    return MODEL_TYPE_PREFIX + base_model_type


def is_vga_model_type(model_type: str | None) -> bool:
    return bool(model_type) and model_type.startswith(MODEL_TYPE_PREFIX)


class VGAConfigMixin:
    """Mixed into `VGA<Base>Config`. `model_type` is the base's in memory and `vga_<base>` on disk."""

    _vga_base_config_class: type | None = None

    def __setattr__(self, key, value):
        # from_dict passes the saved "vga_<base>" as a kwarg, which would shadow the class attribute.
        if key == "model_type":
            return
        super().__setattr__(key, value)

    @classmethod
    def get_config_dict(cls, *args, **kwargs):
        config_dict, kwargs = super().get_config_dict(*args, **kwargs)
        if config_dict.get("model_type") == vga_model_type(cls.model_type):
            config_dict = {**config_dict, "model_type": cls.model_type}
        return config_dict, kwargs

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        if push_to_hub:
            raise ValueError("Push a VGA model with vga_hf.push_to_hub(model, repo_id), which uploads the "
                             "checkpoint with its code and model card.")
        super().save_pretrained(save_directory, **kwargs)
        finish_vga_folder(save_directory, self)


class VGAModelMixin:
    """Mixed into `VGA<Base>For...`: patches itself from `config.vga_config` (default `VGAConfig()` for a
    vanilla config) and checks after `from_pretrained` that every gate came from the checkpoint."""

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        data = getattr(config, CONFIG_ATTR, None)
        self._vga_gates_expected = bool(data)
        patch_model(self, VGAConfig.from_dict(data) if data else VGAConfig())

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """`PreTrainedModel.from_pretrained`, plus: corrupt safetensors files are named; a VGA checkpoint
        that lacks gate tensors raises; a vanilla checkpoint gets exactly initialised (identity) gates.
        `vga_gates_in_checkpoint` (default: whether the config has a vga_config) overrides which it is."""
        want_info = kwargs.pop("output_loading_info", False)
        expected = kwargs.pop("vga_gates_in_checkpoint", None)
        source = pretrained_model_name_or_path
        if isinstance(source, (str, os.PathLike)) and os.path.isdir(source):
            check_safetensors_folder(os.path.join(source, kwargs.get("subfolder") or ""))
        model, info = super().from_pretrained(source, *model_args, output_loading_info=True, **kwargs)
        settle_loaded_gates(model, info, source, model._vga_gates_expected if expected is None else expected)
        return (model, info) if want_info else model


def settle_loaded_gates(model, info: dict, source, expected: bool) -> None:
    """After a load: raise if gate tensors are missing from (or unexpected in) a VGA checkpoint;
    re-initialise the gates that a vanilla checkpoint could not provide (transformers leaves them
    uninitialised: gates are not modules its `_init_weights` knows)."""
    def is_gate(key: str) -> bool:
        return f".{GATE_NAME}." in f".{key}"

    missing = sorted(k for k in info.get("missing_keys", ()) if is_gate(k))
    unexpected = sorted(k for k in info.get("unexpected_keys", ()) if is_gate(k))
    if unexpected:
        raise ValueError(f"{source} holds gate tensors that its VGA configuration does not place: "
                         f"{_shorten(unexpected)}. config.json and the weights do not belong together; "
                         "save the checkpoint again from the patched model.")
    if missing and expected:
        raise ValueError(f"{source} is a VGA checkpoint (config.json has a vga_config) but lacks "
                         f"{len(missing)} gate tensor(s): {_shorten(missing)}. The weights are incomplete: "
                         "save the checkpoint again from the patched model (vga_hf.save_checkpoint).")
    missing = set(missing)
    for name, module in model.named_modules():
        if isinstance(module, PatchedValueGate) and any(f"{name}.{p}" in missing for p, _ in
                                                        module.named_parameters(recurse=False)):
            module.reset_parameters()


def _shorten(keys: list[str], n: int = 6) -> str:
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


# ---- class factories -----------------------------------------------------------------------------
def vga_config_class(base_config_class: type) -> type:
    """`VGA<Base>Config` for a transformers config class (the class itself if it is one already)."""
    return _vga_subclass(_CONFIG_CLASSES, VGAConfigMixin, base_config_class,
                         _vga_base_config_class=base_config_class,
                         __doc__=f"{base_config_class.__name__} of a model with VGA gates (vga_hf).")


def vga_model_class(base_model_class: type) -> type:
    """`VGA<Base>For...` for a transformers model class (the class itself if it is one already)."""
    if issubclass(base_model_class, VGAModelMixin):
        return base_model_class
    return _vga_subclass(_MODEL_CLASSES, VGAModelMixin, base_model_class,
                         config_class=vga_config_class(base_model_class.config_class),
                         __doc__=f"{base_model_class.__name__} with Value-State Gated Attention (vga_hf).")


def _vga_subclass(cache: dict, mixin: type, base: type, **attrs) -> type:
    """`VGA<base name>(mixin, base)`, made once per base and reachable as an attribute of this module."""
    if issubclass(base, mixin):
        return base
    cls = cache.get(base)
    if cls is None:
        name = VGA_PREFIX + base.__name__
        cls = type(name, (mixin, base), {"__module__": __name__, "__qualname__": name, **attrs})
        cache[base] = globals()[name] = cls
    return cls


def __getattr__(name: str):
    """`VGA<Name>` made on first access (pickle finds the classes by module and name)."""
    base = getattr(transformers, name[len(VGA_PREFIX):], None) if name.startswith(VGA_PREFIX) else None
    if isinstance(base, type) and issubclass(base, transformers.PreTrainedConfig):
        return vga_config_class(base)
    if isinstance(base, type) and issubclass(base, transformers.PreTrainedModel):
        return vga_model_class(base)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _use_vga_config_class(model) -> None:
    """Patch hook: a freshly patched model's config becomes `VGA<Base>Config`, so that it saves as a VGA
    checkpoint. Same fields, same in-memory model_type."""
    config = getattr(model, "config", None)
    if config is None or isinstance(config, VGAConfigMixin):
        return
    try:
        config.__class__ = vga_config_class(type(config))
    except TypeError as err:  # pragma: no cover - exotic config classes
        warnings.warn(f"vga_hf: {type(config).__name__} cannot become a VGA config ({err}); its checkpoints will "
                      "not refuse to load without vga_hf. Share the gates with vga_hf.save_gates instead.")


def _restore_base_config_class(model) -> None:
    """Unpatch hook: undo `_use_vga_config_class` (a model whose class is itself VGA keeps its config)."""
    config = getattr(model, "config", None)
    base_config_class = getattr(type(config), "_vga_base_config_class", None)
    if base_config_class is not None and not type(model).__name__.startswith(VGA_PREFIX):
        config.__class__ = base_config_class


if _use_vga_config_class not in PATCH_HOOKS:
    PATCH_HOOKS.append(_use_vga_config_class)
if _restore_base_config_class not in UNPATCH_HOOKS:
    UNPATCH_HOOKS.append(_restore_base_config_class)


# ---- the saved folder ----------------------------------------------------------------------------
def _base_name(name: str) -> str:
    stripped = name[len(VGA_PREFIX):] if name.startswith(VGA_PREFIX) else None
    return stripped if stripped and hasattr(transformers, stripped) else name


def _auto_class_names(base_config_class: type, base_model_class: type) -> list[str]:
    names = []
    for auto_name in AUTO_CLASSES:
        try:
            mapped = getattr(transformers, auto_name)._model_mapping[base_config_class]
        except (KeyError, AttributeError, ValueError):
            continue
        if mapped is base_model_class or (isinstance(mapped, (tuple, list)) and base_model_class in mapped):
            names.append(auto_name)
    return names


def finish_vga_folder(folder, config) -> None:
    """Rewrite the config.json that transformers just wrote into `folder` to the VGA form (when the
    config carries a vga_config) and write the self-contained code; or to the base form otherwise."""
    path = os.path.join(folder, "config.json")
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    base_config = type(config)._vga_base_config_class or type(config)
    architectures = [_base_name(a) for a in data.get("architectures") or []]
    auto_map = {k: v for k, v in (data.get("auto_map") or {}).items()
                if not str(v).startswith(REMOTE_MODULE + ".")}
    code_path = os.path.join(folder, REMOTE_CODE_FILE)
    if data.get(CONFIG_ATTR):
        VGAConfig.from_dict(data[CONFIG_ATTR])  # refuse to write an invalid configuration
        config_class = vga_config_class(base_config)
        model_classes = []
        for name in architectures:
            base_model = getattr(transformers, name, None)
            if not (isinstance(base_model, type) and issubclass(base_model, transformers.PreTrainedModel)):
                raise ValueError(f"vga_hf can only save models whose class is part of transformers; {name!r} "
                                 "is not. Share the gates with vga_hf.save_gates(model, folder) instead.")
            model_classes.append(vga_model_class(base_model))
        data["model_type"] = vga_model_type(base_config.model_type)
        data["architectures"] = [m.__name__ for m in model_classes]
        auto_map["AutoConfig"] = f"{REMOTE_MODULE}.{config_class.__name__}"
        for model_class in model_classes:
            for auto_name in _auto_class_names(base_config, model_class.__mro__[2]):
                auto_map[auto_name] = f"{REMOTE_MODULE}.{model_class.__name__}"
        with open(code_path, "w", encoding="utf-8") as f:
            f.write(remote_code_text(config_class, model_classes))
    else:
        data["model_type"] = base_config.model_type
        data["architectures"] = architectures
        if os.path.exists(code_path):
            os.remove(code_path)
    if auto_map:
        data["auto_map"] = auto_map
    else:
        data.pop("auto_map", None)
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(data, indent=2, sort_keys=True) + "\n")


# ---- the self-contained code ---------------------------------------------------------------------
#: vga_hf sources concatenated into modeling_vga.py, in dependency order (paths below src/vga_hf).
BUNDLE_SOURCES = ("config.py", "gate.py", "architectures.py", "patch.py", "checkpoint/files.py",
                  "checkpoint/classes.py")
_RELATIVE_IMPORT = re.compile(r"^([ \t]*)from \.[\w.]* import (?:\([^)]*\)|[^\n]*)$", re.M)


def remote_code_text(config_class: type, model_classes: list[type]) -> str:
    """Source of modeling_vga.py: vga_hf's gate and patch code plus the classes of this checkpoint."""
    if _BUNDLED:  # saving from the self-contained code itself: reuse it, with a fresh tail
        with open(sys.modules[__name__].__file__, encoding="utf-8") as f:
            body = f.read().split("\n" + _TAIL_MARKER + "\n")[0]
    else:
        body = _bundle_body()
    tail = [_TAIL_MARKER, "_BUNDLED = True"]
    tail.append(f"{config_class.__name__} = vga_config_class(transformers.{_exported(config_class)})")
    for model_class in model_classes:
        tail.append(f"{model_class.__name__} = vga_model_class(transformers.{_exported(model_class)})")
    return body + "\n" + "\n".join(tail) + "\n"


def _exported(vga_class: type) -> str:
    base = vga_class.__mro__[2]  # (VGAClass, mixin, base, ...)
    if getattr(transformers, base.__name__, None) is not base:
        raise ValueError(f"{base.__name__} is not exported by transformers; vga_hf cannot write code that loads it.")
    return base.__name__


def _bundle_body() -> str:
    from importlib.metadata import PackageNotFoundError, version

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        vga_version = version("vga-hf")
    except PackageNotFoundError:  # pragma: no cover
        vga_version = "unknown"
    parts = [
        f'"""Value-State Gated Attention (VGA) for this checkpoint, self-contained (written by vga_hf {vga_version}).\n\n'
        "Load it without vga_hf: AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).\n"
        "With vga_hf installed, `import vga_hf` and load it without trust_remote_code.\n"
        "Generated from vga_hf's own sources: " + ", ".join(BUNDLE_SOURCES) + '.\n"""',
        "from __future__ import annotations",
    ]
    for rel in BUNDLE_SOURCES:
        with open(os.path.join(root, rel), encoding="utf-8") as f:
            text = f.read()
        text = text.replace("from __future__ import annotations\n", "")
        text = _RELATIVE_IMPORT.sub(lambda m: f"{m.group(1)}pass  # (bundled)" if m.group(1) else "", text)
        parts.append(f"# ==== vga_hf/{rel} ====\n{text.strip()}\n")
    body = "\n\n".join(parts)
    leftover = re.findall(r"^\s*(?:from|import) (?:\.|vga_hf)\S*", body, re.M)
    if leftover:  # a source gained an import the bundle cannot satisfy
        raise RuntimeError(f"vga_hf cannot bundle its code: imports {leftover} remain in modeling_vga.py.")
    compile(body, REMOTE_CODE_FILE, "exec")
    return body
