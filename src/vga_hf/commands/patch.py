"""`vga-hf patch SRC OUT`: add VGA gates to a local checkpoint folder and save it as a VGA checkpoint."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ..config import GATE_INPUTS, GRANULARITIES, POSITIONS, VGAConfig

CHOICES = {"granularity": GRANULARITIES, "gate_input": GATE_INPUTS, "position": POSITIONS}
DTYPES = ("auto", "float32", "bfloat16", "float16")


def add_vga_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One `--option` per VGAConfig field, documented by the field's `help` metadata."""
    group = parser.add_argument_group("VGA configuration (defaults: identity gates, the paper's head-wise VGA)")
    defaults = VGAConfig()
    for field in dataclasses.fields(VGAConfig):
        flag = "--" + field.name.replace("_", "-")
        default = getattr(defaults, field.name)
        help_text = field.metadata.get("help", "") + f" (default: {default})"
        if field.name in CHOICES:
            group.add_argument(flag, dest=field.name, choices=CHOICES[field.name], default=default, help=help_text)
        elif field.name == "layers":
            group.add_argument(flag, dest=field.name, type=int, nargs="+", default=default, metavar="I",
                               help=help_text)
        elif isinstance(default, float):
            group.add_argument(flag, dest=field.name, type=float, default=default, metavar="X", help=help_text)
        else:
            group.add_argument(flag, dest=field.name, default=default, help=help_text)


def vga_config_from_args(args: argparse.Namespace) -> VGAConfig:
    return VGAConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(VGAConfig)})


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "patch", help="add VGA gates to a local checkpoint and save it",
        description="Load the causal LM in SRC (a local Hugging Face folder), add a value gate to every decoder "
                    "self-attention layer (zero-initialised by default: the model computes exactly what it did) "
                    "and save it to OUT as a VGA checkpoint with its tokenizer and a model card. The save is atomic.")
    parser.add_argument("src", metavar="SRC", help="folder of the checkpoint to patch (config.json + safetensors)")
    parser.add_argument("out", metavar="OUT", help="folder to write (replaced if it holds a checkpoint)")
    add_vga_config_arguments(parser)
    parser.add_argument("--dtype", choices=DTYPES, default="auto",
                        help="dtype to load and save the weights in (default: auto, the checkpoint's own)")
    parser.add_argument("--max-shard-size", default=None, metavar="SIZE",
                        help="largest weight file, e.g. 500MB; larger models are sharded (default: transformers')")
    parser.add_argument("--gates-only", action="store_true",
                        help="write only the gates (vga_gates.json + vga_gates.safetensors), not the whole model")
    parser.add_argument("--base-model", default=None, metavar="HUB_ID",
                        help="Hub id of the base model, recorded in the model card (default: none)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..checkpoint import save_checkpoint, save_gates
    from ..patch import patch_model, summary

    src = Path(args.src)
    if not (src / "config.json").is_file():
        raise FileNotFoundError(f"{src} is not a checkpoint folder (no config.json).")
    config = vga_config_from_args(args)
    dtype = "auto" if args.dtype == "auto" else getattr(torch, args.dtype)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=dtype)
    patch_model(model, config)
    tokenizer = None
    if any((src / n).exists() for n in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        tokenizer = AutoTokenizer.from_pretrained(src)
    if args.gates_only:
        save_gates(model, args.out, base_model=args.base_model)
    else:
        save_checkpoint(model, args.out, tokenizer=tokenizer, base_model=args.base_model,
                        max_shard_size=args.max_shard_size)
    print(summary(model))
    print(f"saved to {args.out}")
    return 0
