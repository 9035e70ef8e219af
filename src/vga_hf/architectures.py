"""Where the value lives in each architecture: all transformers-specific knowledge (spec section 2).

A *value site* is the submodule of an attention layer whose output holds the value vectors of the
current tokens (after any norm, before the KV cache). Gating its output leaves the original
attention forward, caches and kernels untouched, and keeps the original state-dict keys.

Registry: `ARCHITECTURES[model_type]` is a function `(attention_module, path) -> ValueSite | None`
(None: this module is not decoder self-attention, leave it alone). Model types not in the registry
go through `generic_value_site`. To add an architecture, write one function and register it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

# Parts of a module path that mark attention which is not decoder self-attention.
NON_DECODER_PATH_PARTS = ("vision", "visual", "image", "audio", "encoder", "speech", "crossattention",
                          "cross_attn", "encoder_attn")
GENERIC_VALUE_NAMES = ("v_proj", "value", "v", "value_proj", "v_linear", "wv")
GENERIC_OUTPUT_NAMES = ("o_proj", "out_proj", "dense", "c_proj", "o", "wo", "output_proj")


@dataclass(frozen=True)
class ValueSite:
    value_attr: str           # child of the attention module whose output holds the value
    num_kv_heads: int
    num_heads: int            # query heads (for position="output")
    head_dim: int
    input_dim: int            # size of the tensor the value projection reads (IGA gate input)
    start: int = 0            # value columns inside the site's output (fused qkv projections)
    stop: int | None = None
    heads_layout: bool = False  # site output is [..., n_kv, head_dim] instead of [..., n_kv*head_dim]
    output_attr: str | None = None  # module that receives the heads' outputs (o_proj)


def _in_features(module: nn.Module) -> int:
    for name in ("in_features", "nx"):
        if hasattr(module, name):
            return int(getattr(module, name))
    weight = getattr(module, "weight", None)
    if weight is not None and weight.dim() == 2:
        return int(weight.shape[1])
    raise ValueError(f"cannot tell the input size of {type(module).__name__}")


def _out_features(module: nn.Module) -> int:
    for name in ("out_features", "nf"):
        if hasattr(module, name):
            return int(getattr(module, name))
    weight = getattr(module, "weight", None)
    if weight is not None and weight.dim() == 2:
        return int(weight.shape[0])
    raise ValueError(f"cannot tell the output size of {type(module).__name__}")


def _base(module: nn.Module) -> nn.Module:
    """The wrapped layer of a PEFT tuner layer (its in/out sizes are the base layer's)."""
    return getattr(module, "base_layer", module)


def _cfg(attn: nn.Module, name: str, default=None):
    config = getattr(attn, "config", None)
    value = getattr(attn, name, None)
    if value is None and config is not None:
        value = getattr(config, name, None)
    return default if value is None else value


def _is_non_decoder(attn: nn.Module, path: str) -> bool:
    parts = path.lower().split(".")
    if any(p in part for part in parts for p in NON_DECODER_PATH_PARTS):
        return True
    if getattr(attn, "is_cross_attention", False):
        return True
    return getattr(attn, "is_causal", True) is False


def llama_value_site(attn: nn.Module, path: str) -> ValueSite | None:
    """Llama, Mistral, Qwen2/3, Gemma 1-3, and most decoders since: `self_attn.v_proj`."""
    if _is_non_decoder(attn, path) or not hasattr(attn, "v_proj"):
        return None
    head_dim = int(_cfg(attn, "head_dim"))
    v_proj = _base(attn.v_proj)
    n_kv = _out_features(v_proj) // head_dim
    n_heads = _out_features(_base(attn.q_proj)) // head_dim if hasattr(attn, "q_proj") else n_kv
    return ValueSite("v_proj", n_kv, n_heads, head_dim, _in_features(v_proj), output_attr="o_proj")


def gemma3n_value_site(attn: nn.Module, path: str) -> ValueSite | None:
    """Gemma3n/Gemma4: the value is normalised by `v_norm` right after v_proj; gate after the norm.
    KV-shared layers reuse another layer's (already gated) cache and have no v_proj: skipped."""
    if _is_non_decoder(attn, path) or not hasattr(attn, "v_proj") or not hasattr(attn, "v_norm"):
        return None
    site = llama_value_site(attn, path)
    return ValueSite("v_norm", site.num_kv_heads, site.num_heads, site.head_dim, site.input_dim,
                     heads_layout=True, output_attr="o_proj")


def gpt2_value_site(attn: nn.Module, path: str) -> ValueSite | None:
    """GPT-2: fused `c_attn` (Conv1D) -> [q | k | v]; the value is the last third.
    Cross-attention (`crossattention`, is_cross_attention=True) is left alone."""
    if _is_non_decoder(attn, path) or not hasattr(attn, "c_attn"):
        return None
    embed = int(attn.embed_dim)
    return ValueSite("c_attn", int(attn.num_heads), int(attn.num_heads), int(attn.head_dim),
                     _in_features(_base(attn.c_attn)), start=2 * embed, stop=3 * embed, output_attr="c_proj")


def phi3_value_site(attn: nn.Module, path: str) -> ValueSite | None:
    """Phi-3: fused `qkv_proj`; the value is the last num_key_value_heads * head_dim columns."""
    if _is_non_decoder(attn, path) or not hasattr(attn, "qkv_proj"):
        return None
    head_dim = int(attn.head_dim)
    n_kv = int(_cfg(attn, "num_key_value_heads"))
    n_heads = int(attn.config.num_attention_heads)
    start = (n_heads + n_kv) * head_dim
    return ValueSite("qkv_proj", n_kv, n_heads, head_dim, _in_features(_base(attn.qkv_proj)),
                     start=start, stop=start + n_kv * head_dim, output_attr="o_proj")


def generic_value_site(attn: nn.Module, path: str) -> ValueSite | None:
    """Fallback: an attention module with a separate value projection named like GENERIC_VALUE_NAMES."""
    if _is_non_decoder(attn, path):
        return None
    name = next((n for n in GENERIC_VALUE_NAMES if isinstance(getattr(attn, n, None), nn.Module)), None)
    if name is None:
        return None
    v_mod = _base(getattr(attn, name))
    try:
        out = _out_features(v_mod)
    except ValueError:
        return None
    n_heads = _cfg(attn, "num_heads") or _cfg(attn, "num_attention_heads") or _cfg(attn, "n_head")
    head_dim = _cfg(attn, "head_dim") or _cfg(attn, "attention_head_size")
    if head_dim is None and n_heads:
        hidden = _cfg(attn, "hidden_size") or _cfg(attn, "embed_dim")
        head_dim = hidden // n_heads if hidden else None
    if not head_dim or out % int(head_dim):
        return None
    head_dim = int(head_dim)
    n_kv = out // head_dim
    output_attr = next((n for n in GENERIC_OUTPUT_NAMES if isinstance(getattr(attn, n, None), nn.Module)), None)
    return ValueSite(name, n_kv, int(n_heads or n_kv), head_dim, _in_features(v_mod), output_attr=output_attr)


SiteFinder = Callable[[nn.Module, str], "ValueSite | None"]

#: model_type -> value-site finder. Everything not listed uses `generic_value_site`.
ARCHITECTURES: dict[str, SiteFinder] = {
    "llama": llama_value_site,
    "mistral": llama_value_site,
    "mixtral": llama_value_site,
    "qwen2": llama_value_site,
    "qwen3": llama_value_site,
    "qwen3_moe": llama_value_site,
    "gemma": llama_value_site,
    "gemma2": llama_value_site,
    "gemma3": llama_value_site,
    "gemma3_text": llama_value_site,
    "gemma3n": gemma3n_value_site,
    "gemma3n_text": gemma3n_value_site,
    "gemma4": gemma3n_value_site,
    "gemma4_text": gemma3n_value_site,
    "gpt2": gpt2_value_site,
    "phi3": phi3_value_site,
    "olmo": llama_value_site,
    "olmo2": llama_value_site,
    "granite": llama_value_site,
    "smollm3": llama_value_site,
}


def register_architecture(model_type: str, finder: SiteFinder) -> None:
    """Register (or override) how to find the value site for `model_type`."""
    ARCHITECTURES[model_type] = finder


def model_type_of(config) -> str:
    text = getattr(config, "text_config", None)
    return getattr(text, "model_type", None) or getattr(config, "model_type", "") or ""


def is_attention_module(module: nn.Module) -> bool:
    return type(module).__name__.endswith(("Attention", "SelfAttention", "Attention2"))


def find_value_sites(model: nn.Module, model_type: str) -> list[tuple[str, nn.Module, ValueSite]]:
    """[(path, attention_module, site)] for every decoder self-attention module of `model`."""
    finder = ARCHITECTURES.get(model_type, generic_value_site)
    found = []
    for path, module in model.named_modules():
        if not is_attention_module(module):
            continue
        site = finder(module, path)
        if site is not None:
            found.append((path, module, site))
    return found
