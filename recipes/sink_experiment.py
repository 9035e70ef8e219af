"""Issue 7 experiment: sink pressure + self-distillation, with VGA against without.

Runs each arm of recipes/configs/sink_experiment.yaml as one `recipes/retrofit.py` run (same data,
seed and budget), one after the other, then writes a comparison table. Resumable: an arm whose
summary.json exists is skipped; an interrupted arm continues from its last checkpoint.

    python recipes/sink_experiment.py [--config FILE] [key=value ...] [--table-only]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent
DEFAULT_CONFIG = ROOT / "configs" / "sink_experiment.yaml"

# (label, summary key, format)
ROWS = [
    ("perplexity (held-out)", "perplexity", ".2f"),
    ("W8A8 gap (perplexity)", "w8a8_gap", ".2f"),
    ("sink rate, position 0 (%)", "sink_rate", ".1f"),
    ("sink rate, any key (%)", "max_key_sink_rate", ".1f"),
    ("first-token attention", "first_token_attention", ".3f"),
    ("attention to position 1", "second_token_attention", ".4f"),
    ("largest key attention per head (mean)", "max_key_attention", ".3f"),
    ("largest key not position 0 (%)", "max_key_not_first", ".1f"),
    ("value drain, gated (first / rest)", "value_drain", ".3f"),
    ("value drain, ungated", "value_drain_ungated", ".3f"),
    ("kurtosis (mean)", "kurtosis", ".1f"),
    ("max abs hidden state", "max_inf_norm", ",.0f"),
    ("max abs hidden state, position 0 excluded", "max_inf_norm_excl_first", ",.0f"),
    ("mean gate, first token", "gate_mean_first_token", ".3f"),
    ("mean gate, other tokens", "gate_mean_other_tokens", ".3f"),
    ("gates moved: mean abs(g - g0)", "gate_mean_abs_shift", ".3f"),
]


def load_config(path: Path, overrides: list[str]) -> dict:
    cfg = yaml.safe_load(path.read_text())
    for item in overrides:
        if "=" not in item:
            raise SystemExit(f"sink_experiment: override {item!r} is not key=value")
        key, value = item.split("=", 1)
        parsed = yaml.safe_load(value)
        if key == "arms":
            cfg["selected"] = [a.strip() for a in str(value).split(",")]
        elif key.startswith("common."):
            cfg["common"][key[len("common."):]] = parsed
        elif key.split(".", 1)[0] in cfg["arms"]:
            arm, option = key.split(".", 1)
            cfg["arms"][arm][option] = parsed
        elif key in ("output_dir", "results_dir"):
            cfg[key] = value
        else:
            raise SystemExit(f"sink_experiment: unknown key {key!r} (use output_dir, results_dir, arms, "
                             f"common.<option> or <arm>.<option>; arms: {sorted(cfg['arms'])})")
    return cfg


def arm_args(common: dict, arm: dict, out: Path) -> list[str]:
    options = {**common, **arm}
    args = [f"output_dir={out}"]
    for key, value in options.items():
        if key == "vga" and not value:
            args.append("--no-vga")
        elif key != "vga":
            args.append(f"{key}={'null' if value is None else value}")
    if (out / "checkpoints").exists():
        args.append("resume=latest")
    elif out.exists():
        args.append("overwrite=true")  # an arm that died before its first checkpoint starts again
    return args


def run_arm(name: str, cfg: dict) -> None:
    out = Path(cfg["output_dir"]) / name
    if (out / "summary.json").exists():
        print(f"[{name}] done already ({out / 'summary.json'})")
        return
    cmd = [sys.executable, str(ROOT / "retrofit.py"), *arm_args(cfg["common"], cfg["arms"][name], out)]
    print(f"[{name}] {' '.join(cmd)}", flush=True)
    t0 = time.time()
    subprocess.run(cmd, check=True)
    print(f"[{name}] finished in {time.time() - t0:.0f} s", flush=True)


def table(cfg: dict, names: list[str]) -> tuple[str, dict]:
    results = {}
    for name in names:
        path = Path(cfg["output_dir"]) / name / "summary.json"
        if path.exists():
            results[name] = json.loads(path.read_text())
    if not results:
        return "No finished arm yet.\n", {}
    first = next(iter(results.values()))
    lines = ["| metric | before (all arms) | " + " | ".join(results) + " |",
             "|---|---|" + "---|" * len(results)]
    for label, key, fmt in ROWS:
        cells = [_fmt(first["before"].get(key), fmt)] + [_fmt(r["after"].get(key), fmt) for r in results.values()]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("| train seconds | - | " + " | ".join(f"{r['run'].get('train_seconds', 0):.0f}"
                                                      for r in results.values()) + " |")
    return "\n".join(lines) + "\n", results


def _fmt(value, fmt: str) -> str:
    if value is None:
        return "-"
    try:
        return format(value, fmt)
    except (TypeError, ValueError):
        return str(value)


def write_results(cfg: dict, names: list[str]) -> str:
    md, results = table(cfg, names)
    out = Path(cfg["results_dir"])
    out.mkdir(parents=True, exist_ok=True)
    arms = "\n".join(f"- `{n}`: " + ", ".join(f"{k}={v}" for k, v in cfg["arms"][n].items()) for n in names)
    common = ", ".join(f"{k}={v}" for k, v in cfg["common"].items())
    text = (f"# Sink pressure + distillation, with and without VGA (SmolLM2-135M)\n\n"
            f"Made by `python recipes/sink_experiment.py` (recipes/configs/sink_experiment.yaml).\n\n"
            f"Common options: {common}.\n\nArms:\n{arms}\n\n{md}")
    for path, content in ((out / "results.md", text), (out / "results.json", json.dumps(results, indent=2))):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(content)
        os.replace(tmp, path)
    return md


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="experiment YAML")
    parser.add_argument("--table-only", action="store_true", help="only rebuild the table from finished arms")
    parser.add_argument("overrides", nargs="*", help="key=value: output_dir, results_dir, arms=a,b, "
                        "common.<retrofit option>, <arm>.<retrofit option>")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    names = cfg.get("selected") or list(cfg["arms"])
    unknown = sorted(set(names) - set(cfg["arms"]))
    if unknown:
        raise SystemExit(f"sink_experiment: unknown arms {unknown}; known: {sorted(cfg['arms'])}")
    if not args.table_only:
        for name in names:
            run_arm(name, cfg)
            write_results(cfg, names)  # the table grows arm by arm
    print(write_results(cfg, names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
