"""`patch_model`: put a value gate into every decoder self-attention layer of a model, in place.

How: each attention module gets a `vga_gate` child (a `PatchedValueGate`) and a forward hook on its
value site (architectures.py), which replaces the value columns of the site's output by
`g * v`. The attention forward, the KV cache (which then stores gated values) and every attention
kernel run unchanged; the original state-dict keys stay as they are and the gates add
`<attention path>.vga_gate.weight` / `.bias`.

Per instance: nothing global is modified. If PEFT (or anything else) later wraps the value
projection, the gate moves its hook onto the wrapper at the next forward, so LoRA's contribution
to the value is gated too.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch
from torch import nn

from .architectures import ARCHITECTURES, ValueSite, find_value_sites, model_type_of
from .config import VGAConfig
from .gate import ValueGate, expand_gate_to_query_heads

GATE_NAME = "vga_gate"
CONFIG_ATTR = "vga_config"  # on model.config: the VGAConfig as a dict (saved into config.json)
#: Callables `hook(model)` run at the end of every `patch_model` (vga_hf.checkpoint registers one
#: that makes the model's config save as a VGA checkpoint).
PATCH_HOOKS: list = []
#: Callables `hook(model)` run at the end of every `unpatch_model`: each undoes what its PATCH_HOOKS
#: counterpart did.
UNPATCH_HOOKS: list = []


class PatchedValueGate(ValueGate):
    """A `ValueGate` plus the hooks that attach it to one attention module's value site.

    No reference to other modules is stored on the gate (so `copy.deepcopy` of a gate, as PEFT's
    `modules_to_save` does, copies only the gate); the hooks are bound methods of the gate, so a
    deep copy of the whole model rebinds them to the copied gate.
    """

    def __init__(self, config: VGAConfig, site: ValueSite, layer_idx: int, **factory: Any) -> None:
        super().__init__(config, site.num_kv_heads, site.head_dim, site.input_dim, **factory)
        self.site = site
        self.layer_idx = layer_idx
        self.position = config.position
        self.record = False  # diagnostics: keep the last gate / ungated value (detached)
        self.last_gate: torch.Tensor | None = None
        self.last_value: torch.Tensor | None = None

    def forward(self, value: torch.Tensor, layer_input: torch.Tensor | None = None):
        gated, g = super().forward(value, layer_input)
        if self.record:
            self.last_gate, self.last_value = g.detach(), value.detach()
        return gated, g

    # -- plumbing ---------------------------------------------------------------------------
    def attach(self, attn: nn.Module) -> None:
        attn.register_forward_pre_hook(self._attention_pre_hook)
        self._hook_value_site(getattr(attn, self.site.value_attr))
        if self.position == "output":
            getattr(attn, self.site.output_attr).register_forward_pre_hook(self._output_pre_hook)

    def _attention_pre_hook(self, attn: nn.Module, args: tuple) -> None:
        # The module that computes this forward's gate: normally self; under PEFT modules_to_save the
        # wrapper in attn.vga_gate (it dispatches to the trainable copy of the active adapter).
        self.__dict__["_active"] = attn._modules[GATE_NAME]
        site = getattr(attn, self.site.value_attr)
        if not site.__dict__.get(_SITE_FLAG, False):
            # The value site was replaced since patching (e.g. PEFT wrapped v_proj in a LoRA layer, or
            # merge_and_unload unwrapped it): move the hook onto the current module so that everything
            # it outputs, LoRA's contribution included, is gated.
            for module in attn.modules():
                _remove_hooks(module, kinds=("forward",))
            self._hook_value_site(site)

    def _hook_value_site(self, site: nn.Module) -> None:
        site.register_forward_hook(self._value_hook, with_kwargs=True)
        site.__dict__[_SITE_FLAG] = True  # a plain flag: cheap to check, and traceable by torch.compile

    def _value_hook(self, module: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor):
        site = self.site
        x = None
        if self.gate_input == "input":
            x = args[0] if args else next(iter(kwargs.values()))
        if site.heads_layout:  # [..., n_kv, hd]
            v = output.reshape(*output.shape[:-2], -1)
        elif site.start == 0 and site.stop is None:
            v = output
        else:
            v = output[..., site.start:site.stop]
        compute = self.__dict__.pop("_active", None) or self
        gated, g = compute(v, x)
        if self.position == "output":
            self.__dict__["_stash"] = g
            return output
        if site.heads_layout:
            return gated.view(output.shape)
        if site.start == 0 and site.stop is None:
            return gated
        return torch.cat([output[..., :site.start], gated, output[..., site.stop:]], dim=-1)

    def _output_pre_hook(self, module: nn.Module, args: tuple):
        g = self.__dict__.pop("_stash", None)
        if g is None:
            raise RuntimeError("VGA position='output': no gate was computed for this forward.")
        z = args[0]  # [..., n_heads*hd]
        g = expand_gate_to_query_heads(g, self.site.num_heads)  # [..., n_heads, per_head]
        z = (z.reshape(*z.shape[:-1], self.site.num_heads, self.head_dim) * g).reshape(z.shape)
        return (z, *args[1:])


_SITE_FLAG = "_vga_value_site"


def _is_vga_hook(fn) -> bool:
    return isinstance(getattr(fn, "__self__", None), PatchedValueGate)


def _remove_hooks(module: nn.Module, kinds=("forward", "pre")) -> None:
    """Remove vga_hf hooks (and the value-site flag) from `module`."""
    if "forward" in kinds:
        module.__dict__.pop(_SITE_FLAG, None)
    tables = {"forward": module._forward_hooks, "pre": module._forward_pre_hooks}
    for kind in kinds:
        hooks = tables[kind]
        for key in [k for k, fn in hooks.items() if _is_vga_hook(fn)]:
            del hooks[key]
            for extra in ("_forward_hooks_with_kwargs", "_forward_hooks_always_called",
                          "_forward_pre_hooks_with_kwargs"):
                getattr(module, extra, {}).pop(key, None)


def _gate_of(attn: nn.Module) -> PatchedValueGate | None:
    """The gate of an attention module: its `vga_gate` child, or under PEFT `modules_to_save` the
    copy of the active adapter (the one that is trained and saved)."""
    child = attn._modules.get(GATE_NAME)
    if isinstance(child, PatchedValueGate):
        return child
    original = getattr(child, "original_module", None)
    if isinstance(original, PatchedValueGate):
        copies = getattr(child, "modules_to_save", {})
        active = getattr(child, "active_adapters", None) or []
        for name in active:
            if name in copies:
                return copies[name]
        return original
    return None


# ---- public API ------------------------------------------------------------------------------
def unwrap_peft(model: nn.Module) -> nn.Module:
    """The transformers model inside a PEFT wrapper (PeftModel -> LoraModel -> PreTrainedModel)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def patch_model(model: nn.Module, config: VGAConfig | None = None, **overrides: Any) -> nn.Module:
    """Add a zero-initialised value gate to every decoder self-attention layer of `model`, in place.

    `config` (default `VGAConfig()`) may be refined by keyword overrides, e.g.
    `patch_model(model, granularity="element")`. Returns `model`. Patching an already patched
    model with the same configuration does nothing; with a different one it raises.
    """
    if config is None:
        config = VGAConfig()
    elif isinstance(config, dict):
        config = VGAConfig.from_dict(config)
    elif not isinstance(config, VGAConfig):
        raise TypeError(f"config must be a VGAConfig or a dict, got {type(config).__name__}.")
    if overrides:
        config = config.replace(**overrides)
    base = unwrap_peft(model)
    if is_patched(model):
        current = get_vga_config(model)
        if current == config:
            return model
        raise ValueError(
            f"This model is already patched with {current}; patching again with {config} would stack "
            "gates. Call vga_hf.unpatch_model(model) first."
        )
    hf_config = getattr(base, "config", None)
    model_type = model_type_of(hf_config) if hf_config is not None else ""
    sites = find_value_sites(base, model_type)
    if not sites:
        raise ValueError(
            f"vga_hf found no decoder self-attention with a value projection in this "
            f"{type(base).__name__} (model_type={model_type!r}). Supported model types: "
            f"{', '.join(sorted(ARCHITECTURES))}; other decoders work when their attention modules "
            "have a value projection named v_proj/value/v. Register a finder with "
            "vga_hf.register_architecture(model_type, finder) for anything else."
        )
    chosen = _select_layers(sites, config.layers)
    if config.position == "output" and any(site.output_attr is None for _, (_, _, site) in chosen):
        raise ValueError("VGAConfig.position='output' needs an output projection (o_proj) in every "
                         "patched attention module; this architecture has none. Use position='value'.")
    for layer_idx, (path, attn, site) in chosen:
        weight = next(p for p in getattr(attn, site.value_attr).parameters())
        gate = PatchedValueGate(config, site, layer_idx, dtype=weight.dtype, device=weight.device)
        attn.add_module(GATE_NAME, gate)
        gate.attach(attn)
    if hf_config is not None:
        setattr(hf_config, CONFIG_ATTR, config.to_dict())
        for hook in PATCH_HOOKS:
            hook(base)
    else:
        object.__setattr__(base, "_vga_config_dict", config.to_dict())
    return model


def _select_layers(sites, layers: list[int] | None):
    indexed = []
    for i, (path, attn, site) in enumerate(sites):
        idx = getattr(attn, "layer_idx", None)
        indexed.append((i if idx is None else int(idx), (path, attn, site)))
    if layers is None:
        return indexed
    n = len(indexed)
    wanted = set()
    for i in layers:
        if not -n <= i < n:
            raise ValueError(f"VGAConfig.layers contains {i}, but this model has {n} decoder "
                             f"attention layers (valid: {-n}..{n - 1}).")
        wanted.add(i % n)
    return [indexed[i] for i in sorted(wanted)]


def unpatch_model(model: nn.Module) -> nn.Module:
    """Remove every gate and hook; the model is then exactly the original (parameters untouched)."""
    base = unwrap_peft(model)
    for _, attn in list(_gated_attention(base)):
        for module in attn.modules():
            _remove_hooks(module)
        del attn._modules[GATE_NAME]
    config = getattr(base, "config", None)
    if config is not None and hasattr(config, CONFIG_ATTR):
        delattr(config, CONFIG_ATTR)
    for hook in UNPATCH_HOOKS:
        hook(base)
    base.__dict__.pop("_vga_config_dict", None)
    return model


def _gated_attention(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    for path, module in model.named_modules():
        if GATE_NAME in module._modules and _gate_of(module) is not None:
            yield path, module


def is_patched(model: nn.Module) -> bool:
    return any(True for _ in _gated_attention(unwrap_peft(model)))


def get_vga_config(model: nn.Module) -> VGAConfig | None:
    base = unwrap_peft(model)
    data = getattr(getattr(base, "config", None), CONFIG_ATTR, None) or base.__dict__.get("_vga_config_dict")
    return VGAConfig.from_dict(data) if data else None


def get_gates(model: nn.Module) -> dict[int, PatchedValueGate]:
    """{layer index: gate module}, in layer order."""
    gates = [_gate_of(attn) for _, attn in _gated_attention(unwrap_peft(model))]
    return {gate.layer_idx: gate for gate in sorted(gates, key=lambda g: g.layer_idx)}


def gate_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    for gate in get_gates(model).values():
        yield from gate.parameters()


def gate_named_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    for name, param in model.named_parameters():
        if f".{GATE_NAME}." in f".{name}":
            yield name, param


def mark_only_gates_trainable(model: nn.Module) -> nn.Module:
    """Freeze everything but the gates (requires_grad); returns the model."""
    if not is_patched(model):
        raise ValueError("The model has no VGA gates; call vga_hf.patch_model(model) first.")
    gate_ids = {id(p) for p in gate_parameters(model)}
    for p in model.parameters():
        p.requires_grad_(id(p) in gate_ids)
    return model


def summary(model: nn.Module) -> str:
    """One line: layers patched, gate parameters added, their share of the model."""
    gates = get_gates(model)
    if not gates:
        return "vga_hf: model not patched"
    added = sum(p.numel() for p in gate_parameters(model))
    total = sum(p.numel() for p in model.parameters())
    config = get_vga_config(model)
    base = unwrap_peft(model)
    n_attn = len(find_value_sites(base, model_type_of(getattr(base, "config", None))))
    return (f"vga_hf: {len(gates)}/{n_attn} attention layers gated ({config.granularity} gates from "
            f"{config.gate_input}, position={config.position}), {added:,} gate parameters added "
            f"({100 * added / max(total - added, 1):.4f}% of the model)")
