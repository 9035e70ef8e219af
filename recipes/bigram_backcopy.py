#!/usr/bin/env python
"""Bigram-Backcopy (spec section 4): vanilla vs IGA vs VGA vs VGA-on-head-output, from scratch.

    python recipes/bigram_backcopy.py                                   # defaults (= the YAML beside)
    python recipes/bigram_backcopy.py --config recipes/configs/bigram_backcopy.yaml seeds=[0,1,2]
    python recipes/bigram_backcopy.py steps=50 variants=[vanilla,vga] output_dir=/tmp/bb
    python recipes/bigram_backcopy.py --help                            # every option

Writes into `output_dir`: results.json (config, per variant and seed the metric history, final
values and a sample's attention map / value norms; a summary over seeds), summary.md (the table),
fig5_training_curves.png (the paper's Figure 5: five curves over steps, one panel per variant) and
fig4_attention_values.png (Figure 4: attention map on one sequence and the value-state norm per
token, one column per variant). results.json is rewritten after every finished run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import yaml

# option -> (default, help). The YAML in recipes/configs/ mirrors these defaults.
OPTIONS: dict[str, tuple[object, str]] = {
    "output_dir": ("runs/bigram_backcopy", "folder for results.json, summary.md and the figures"),
    "variants": (["vanilla", "iga", "vga", "vga_output"],
                 "variants to train: vanilla, iga (gate from layer input), vga (gate from value), "
                 "vga_output (gate from value, applied to each head's output: paper appendix form)"),
    "seeds": ([0], "seeds; each seed fixes model init and data, identical across variants"),
    "arch": ("gpt2", "gpt2 (pre-norm LayerNorm, learned positions, GELU MLP) or llama (pre-norm RMSNorm, RoPE, "
                     "SwiGLU MLP; forms no <s> sink at the default size, see docs/bigram_backcopy.md)"),
    "layers": (1, "decoder layers"),
    "heads": (1, "attention heads"),
    "hidden": (64, "model width"),
    "mlp_ratio": (4, "MLP width / model width"),
    "seq_len": (64, "sequence length, including <s>"),
    "batch": (32, "sequences per training step"),
    "steps": (800, "training steps"),
    "lr": (3e-3, "AdamW peak learning rate (linear warmup, then constant)"),
    "weight_decay": (0.0, "AdamW weight decay on matrices (gates, norms, biases: none)"),
    "warmup": (20, "warmup steps"),
    "grad_clip": (1.0, "gradient norm clip (0: off)"),
    "eval_every": (25, "steps between evaluations"),
    "eval_batch": (64, "fixed evaluation sequences (same for every variant of a seed)"),
    "metric_layer": (-1, "decoder layer whose attention / value metrics are the headline (-1: last)"),
    "k": (3, "number of trigger characters (the k most frequent)"),
    "plays": (None, "Shakespeare plays for the character statistics (null: all)"),
    "gate_scale": (1.0, "gate scale s (1: the paper's from-scratch form, g = 0.5 at init)"),
    "gate_bias": (0.0, "gate bias init b"),
    "threads": (1, "torch threads (1 coexists best with other jobs on a shared CPU)"),
    "figures": (True, "write the PNG figures"),
    "replot_from": (None, "path of an existing results.json: rewrite summary.md and the figures from it into "
                          "output_dir, without training"),
    "progress": (True, "tqdm progress bar"),
}
METRICS = ["backcopy_risk", "bigram_risk", "attn_bos", "raw_value_norm_bos", "logit_gap"]
TABLE_METRICS = METRICS + ["value_norm_bos", "value_ratio_bos", "raw_value_ratio_bos", "gate_bos", "gate_rest"]
METRIC_LABELS = {
    "backcopy_risk": "backcopy risk",
    "bigram_risk": "bigram risk",
    "attn_bos": "attention on <s> (non-trigger queries)",
    "raw_value_norm_bos": "|v(<s>)| (value state)",
    "value_norm_bos": "|g·v(<s>)| (gated value, where the gate acts on values)",
    "logit_gap": "logit gap of <s> (right axis)",
}
DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "bigram_backcopy.yaml"


# ---- configuration -----------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> dict:
    lines = [f"  {k}={json.dumps(v[0])}\n      {v[1]}" for k, v in OPTIONS.items()]
    parser = argparse.ArgumentParser(
        description="Bigram-Backcopy: train vanilla / IGA / VGA decoders from scratch and measure the "
                    "<s> attention sink. Options are key=value (values parsed as YAML).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="options (key=default):\n" + "\n".join(lines))
    parser.add_argument("--config", type=Path, default=None,
                        help=f"YAML file of options (e.g. {DEFAULT_CONFIG.relative_to(Path.cwd()) if DEFAULT_CONFIG.is_relative_to(Path.cwd()) else DEFAULT_CONFIG})")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="override one option")
    args = parser.parse_args(argv)
    config = {k: v[0] for k, v in OPTIONS.items()}
    if args.config is not None:
        loaded = yaml.safe_load(args.config.read_text()) or {}
        _merge(config, loaded, f"--config {args.config}", parser)
    for item in args.overrides:
        if "=" not in item:
            parser.error(f"override {item!r} is not key=value")
        key, raw = item.split("=", 1)
        _merge(config, {key.strip(): yaml.safe_load(raw)}, "command line", parser)
    return _validate(config, parser)


def _merge(config: dict, new: dict, where: str, parser) -> None:
    unknown = sorted(set(new) - set(OPTIONS))
    if unknown:
        parser.error(f"unknown option(s) {unknown} from {where}; known: {', '.join(OPTIONS)}")
    config.update(new)


def _validate(config: dict, parser) -> dict:
    from vga_hf.bigram import VARIANTS

    if isinstance(config["seeds"], int):
        config["seeds"] = [config["seeds"]]
    if isinstance(config["variants"], str):
        config["variants"] = [config["variants"]]
    bad = [v for v in config["variants"] if v not in VARIANTS]
    if bad:
        parser.error(f"unknown variant(s) {bad}; known: {', '.join(VARIANTS)}")
    for key in ("layers", "heads", "hidden", "mlp_ratio", "seq_len", "batch", "steps", "warmup", "eval_every",
                "eval_batch", "k", "threads", "metric_layer"):
        if not isinstance(config[key], int) or isinstance(config[key], bool):
            parser.error(f"{key} must be an integer, got {config[key]!r}")
    for key in ("lr", "weight_decay", "grad_clip", "gate_scale", "gate_bias"):
        if isinstance(config[key], str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                config[key] = float(config[key])
            except ValueError:
                pass
        if not isinstance(config[key], (int, float)) or isinstance(config[key], bool):
            parser.error(f"{key} must be a number, got {config[key]!r}")
        config[key] = float(config[key])
    if config["arch"] not in ("llama", "gpt2"):
        parser.error(f"arch must be llama or gpt2, got {config['arch']!r}")
    if config["steps"] < 1 or config["seq_len"] < 4 or config["hidden"] % config["heads"]:
        parser.error("need steps >= 1, seq_len >= 4 and hidden divisible by heads")
    return config


# ---- atomic writes -------------------------------------------------------------------------------
def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_savefig(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def rounded(obj, digits: int = 4):
    """Floats rounded to `digits` significant digits (keeps results.json small: attention maps)."""
    if isinstance(obj, float):
        return float(f"{obj:.{digits}g}") if math.isfinite(obj) else obj
    if isinstance(obj, dict):
        return {k: rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [rounded(v, digits) for v in obj]
    return obj


# ---- summary -------------------------------------------------------------------------------------
def summarize(runs: dict) -> dict:
    """{variant: {metric: {mean, std, min, max, n}}} of the final values over seeds."""
    out = {}
    for variant, by_seed in runs.items():
        out[variant] = {}
        for m in TABLE_METRICS:
            vals = [r["final"][m] for r in by_seed.values() if r["final"].get(m) is not None]
            vals = [v for v in vals if not (isinstance(v, float) and math.isnan(v))]
            if not vals:
                continue
            mean = sum(vals) / len(vals)
            std = (sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) ** 0.5 if len(vals) > 1 else 0.0
            out[variant][m] = {"mean": mean, "std": std, "min": min(vals), "max": max(vals), "n": len(vals)}
    return out


def summary_table(summary: dict, bigram_floor: float | None = None) -> str:
    """Markdown table: mean ± std (min..max) over seeds, one row per variant."""
    cols = ["backcopy_risk", "bigram_risk", "attn_bos", "logit_gap", "raw_value_norm_bos", "raw_value_ratio_bos",
            "value_norm_bos", "value_ratio_bos", "gate_bos", "gate_rest"]
    names = {"backcopy_risk": "backcopy risk", "bigram_risk": "bigram risk", "attn_bos": "attn on <s>",
             "logit_gap": "logit gap <s>", "raw_value_norm_bos": "\\|v(<s>)\\|",
             "raw_value_ratio_bos": "\\|v(<s>)\\| / mean \\|v\\|",
             "value_norm_bos": "\\|g·v(<s>)\\|", "value_ratio_bos": "\\|g·v(<s>)\\| / mean \\|g·v\\|",
             "gate_bos": "gate g(<s>)", "gate_rest": "gate, other tokens"}
    lines = ["| variant | " + " | ".join(names[c] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for variant, stats in summary.items():
        cells = []
        for c in cols:
            s = stats.get(c)
            if s is None:
                cells.append("–")
            elif s["n"] > 1:
                cells.append(f"{s['mean']:.3f} ± {s['std']:.3f} ({s['min']:.3f}..{s['max']:.3f})")
            else:
                cells.append(f"{s['mean']:.3f}")
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    if bigram_floor is not None:
        text += (f"\nBigram risk floor (oracle entropy on the evaluation set): {bigram_floor:.3f}; "
                 "backcopy risk floor: 0.\n")
    return text


# ---- figures -------------------------------------------------------------------------------------
def figure5(runs: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from vga_hf.bigram import VARIANT_LABELS

    variants = list(runs)
    fig, axes = plt.subplots(1, len(variants), figsize=(4.4 * len(variants), 3.6), squeeze=False, sharey=True)
    colors = dict(zip(METRICS, ["tab:blue", "tab:orange", "tab:red", "tab:green", "tab:purple"]))
    gap_max = max(abs(h["logit_gap"]) for by_seed in runs.values() for r in by_seed.values()
                  for h in r["history"])
    twins = []
    for ax, variant in zip(axes[0], variants):
        by_seed = list(runs[variant].values())
        steps = np.array([h["step"] for h in by_seed[0]["history"]])
        twin = ax.twinx()
        twins.append(twin)
        for m in METRICS:
            data = np.array([[h[m] for h in r["history"]] for r in by_seed], dtype=float)
            target = twin if m == "logit_gap" else ax
            style = "--" if m == "logit_gap" else "-"
            target.plot(steps, data.mean(0), style, color=colors[m], label=METRIC_LABELS[m])
            if len(by_seed) > 1:
                target.fill_between(steps, data.min(0), data.max(0), color=colors[m], alpha=0.2)
        if variant in ("iga", "vga"):  # the gate multiplies the value: show what attention mixes
            data = np.array([[h["value_norm_bos"] for h in r["history"]] for r in by_seed], dtype=float)
            ax.plot(steps, data.mean(0), ":", color=colors["raw_value_norm_bos"], linewidth=2,
                    label=METRIC_LABELS["value_norm_bos"])
        ax.set_title(f"{VARIANT_LABELS[variant]}\n({len(by_seed)} seed{'s' if len(by_seed) > 1 else ''})",
                     fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        twin.set_ylim(min(-0.5, -0.05 * gap_max), 1.05 * gap_max + 0.5)
    for twin in twins[:-1]:
        twin.set_yticklabels([])
    twins[-1].set_ylabel("logit gap")
    handles = {}
    for a in [*axes[0], *twins]:
        for h in a.get_legend_handles_labels()[0]:
            handles.setdefault(h.get_label(), h)
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=3, fontsize=8,
               bbox_to_anchor=(0.5, -0.12))
    fig.suptitle("Bigram-Backcopy: task risks and <s> sink metrics over training (mean, band = min..max over seeds)",
                 fontsize=10)
    fig.tight_layout()
    atomic_savefig(fig, path)
    plt.close(fig)


def figure4(runs: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from vga_hf.bigram import VARIANT_LABELS

    variants = list(runs)
    fig, axes = plt.subplots(2, len(variants), figsize=(4.6 * len(variants), 8.4), squeeze=False,
                             gridspec_kw={"height_ratios": [3, 1.2], "hspace": 0.35, "wspace": 0.3})
    vmax = max(max(next(iter(runs[v].values()))["sample"]["value_norm"] +
                   next(iter(runs[v].values()))["sample"]["raw_value_norm"]) for v in variants)
    for col, variant in enumerate(variants):
        seed, run = next(iter(runs[variant].items()))
        s = run["sample"]
        attn = np.array(s["attention"])
        T = attn.shape[0]
        glyph = {" ": "␣", "\n": "\\n", "\t": "\\t"}
        labels = ["<s>"] + [glyph.get(c, c) for c in s["text"][1:]]
        ax = axes[0][col]
        im = ax.imshow(attn, cmap="viridis", vmin=0, vmax=1, aspect="auto")
        ax.set_title(f"{VARIANT_LABELS[variant]} (seed {seed}, layer {s['layer']})\nattention map", fontsize=9)
        ticks = list(range(0, T, max(1, T // 64)))
        xticks = list(range(0, T, max(1, T // 16)))
        ax.set_xticks(xticks, [f"{labels[i]} {i}" for i in xticks], fontsize=6, rotation=90)
        ax.set_yticks(ticks, [labels[i] for i in ticks], fontsize=5)
        for i in ticks:
            if s["triggers"][i]:
                ax.get_yticklabels()[ticks.index(i)].set_color("red")
        ax.set_xlabel("key", fontsize=8)
        ax.set_ylabel("query (red: trigger)", fontsize=8)
        ax2 = axes[1][col]
        x = np.arange(T)
        ax2.bar(x, s["value_norm"], color=["tab:red" if i == 0 else "tab:blue" for i in x], width=0.8,
                label="|g·v| (gated value)")
        ax2.plot(x, s["raw_value_norm"], ".", color="black", markersize=3, label="|v| (before gate)")
        ax2.set_ylim(0, 1.05 * vmax)
        ax2.set_xlim(-0.5, T - 0.5)
        ax2.set_xticks(xticks, [f"{labels[i]} {i}" for i in xticks], fontsize=6, rotation=90)
        ax2.set_title("value-state norm per token (<s> in red)", fontsize=8)
        ax2.set_ylabel("norm", fontsize=8)
        if col == 0:
            ax2.legend(fontsize=7, loc="upper right")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="attention weight")
    atomic_savefig(fig, path)
    plt.close(fig)


def replot(results_path: Path, out_dir: Path) -> dict:
    """summary.md and both figures from an existing results.json."""
    results = json.loads(results_path.read_text())
    results["summary"] = summarize(results["runs"])
    table = summary_table(results["summary"], results["task"]["bigram_risk_floor"])
    atomic_write_text(out_dir / "summary.md", table)
    figure5(results["runs"], out_dir / "fig5_training_curves.png")
    figure4(results["runs"], out_dir / "fig4_attention_values.png")
    print(table)
    return results


# ---- main ----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict:
    config = parse_args(argv)
    import torch
    from tqdm.auto import tqdm

    from vga_hf import assets
    from vga_hf.bigram import BigramBackcopy, train_variant

    torch.set_num_threads(config["threads"])
    out_dir = Path(config["output_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    if config["replot_from"]:
        return replot(Path(config["replot_from"]), out_dir)
    texts = assets.shakespeare_texts(config["plays"])
    task = BigramBackcopy.from_text("\n".join(texts.values()), k=config["k"])
    floor_tokens = task.sample(512, config["seq_len"], torch.Generator().manual_seed(12345))
    bigram_floor = task.bigram_entropy(floor_tokens)
    train_keys = ("arch", "layers", "heads", "hidden", "mlp_ratio", "seq_len", "batch", "steps", "lr",
                  "weight_decay", "warmup", "grad_clip", "eval_every", "eval_batch", "metric_layer",
                  "gate_scale", "gate_bias")
    train_kwargs = {k: config[k] for k in train_keys}
    results = {
        "config": config,
        "command": "python recipes/bigram_backcopy.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "task": {"vocab_size": task.vocab_size, "triggers": [task.vocab[i] for i in task.triggers],
                 "plays": sorted(texts), "bigram_risk_floor": bigram_floor},
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "threads": config["threads"]},
        "runs": {}, "summary": {}, "seconds": {},
    }
    total = config["steps"] * len(config["variants"]) * len(config["seeds"])
    bar = tqdm(total=total, disable=not config["progress"], desc="bigram-backcopy", dynamic_ncols=True)
    t_start = time.time()
    for seed in config["seeds"]:
        for variant in config["variants"]:
            bar.set_postfix_str(f"{variant} seed {seed}")
            t0 = time.time()
            run = train_variant(task, variant, seed, progress=bar.update, **train_kwargs)
            run.pop("model")
            results["runs"].setdefault(variant, {})[str(seed)] = run
            results["seconds"][f"{variant}/{seed}"] = round(time.time() - t0, 1)
            f = run["final"]
            bar.write(f"[{variant} seed {seed}] backcopy {f['backcopy_risk']:.3f} bigram {f['bigram_risk']:.3f} "
                      f"attn<s> {f['attn_bos']:.3f} |v<s>| {f['value_norm_bos']:.3f} gap {f['logit_gap']:.2f} "
                      f"({time.time() - t0:.0f}s)")
            results["summary"] = summarize(results["runs"])
            results["seconds"]["total"] = round(time.time() - t_start, 1)
            atomic_write_text(out_dir / "results.json", json.dumps(rounded(results), separators=(",", ":")) + "\n")
        # after every seed: table and figures of what is finished (a cut-short run still leaves them)
        table = summary_table(results["summary"], bigram_floor)
        atomic_write_text(out_dir / "summary.md", table)
        if config["figures"]:
            figure5(results["runs"], out_dir / "fig5_training_curves.png")
            figure4(results["runs"], out_dir / "fig4_attention_values.png")
    bar.close()
    print(table)
    print(f"wrote {out_dir}/results.json, summary.md" + (", fig5_training_curves.png, fig4_attention_values.png"
                                                         if config["figures"] else "")
          + f" in {results['seconds']['total']:.0f}s")
    return results


if __name__ == "__main__":
    main()
