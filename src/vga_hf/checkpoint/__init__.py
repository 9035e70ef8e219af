"""Checkpoints of VGA models: HF-format saves that never load without their gates, gates-only files,
model cards and Hub upload. Importing this package teaches transformers' Auto classes the `vga_*` types."""

from .atomic import atomic_directory
from .card import model_card_text, read_card_metadata
from .classes import VGAConfigMixin, VGAModelMixin, vga_config_class, vga_model_class
from .files import check_safetensors_file, check_safetensors_folder
from .hub import push_to_hub
from .stats import gate_statistics, read_vga_config
from .load import from_pretrained, load_gates
from .register import install as _install
from .register import register_vga_model_type
from .save import save_checkpoint, save_gates

_install()

__all__ = [
    "VGAConfigMixin", "VGAModelMixin", "atomic_directory", "check_safetensors_file", "check_safetensors_folder",
    "from_pretrained", "gate_statistics", "load_gates", "model_card_text", "push_to_hub", "read_card_metadata",
    "read_vga_config", "register_vga_model_type", "save_checkpoint", "save_gates", "vga_config_class",
    "vga_model_class",
]
