"""vga_hf: Value-State Gated Attention for Hugging Face Transformers."""

from .architectures import ARCHITECTURES, ValueSite, register_architecture
from .config import FORMAT_VERSION, VGAConfig
from .gate import ValueGate
from .patch import (
    gate_named_parameters,
    gate_parameters,
    get_gates,
    get_vga_config,
    is_patched,
    mark_only_gates_trainable,
    patch_model,
    summary,
    unpatch_model,
)
from .checkpoint import from_pretrained, load_gates, push_to_hub, save_checkpoint, save_gates

__version__ = "0.1.0"

__all__ = [
    "ARCHITECTURES", "FORMAT_VERSION", "ValueGate", "ValueSite", "VGAConfig", "gate_named_parameters",
    "gate_parameters", "get_gates", "get_vga_config", "is_patched", "mark_only_gates_trainable",
    "patch_model", "register_architecture", "summary", "unpatch_model",
    "from_pretrained", "load_gates", "push_to_hub", "save_checkpoint", "save_gates",
]
