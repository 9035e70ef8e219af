"""`vga-hf info DIR`: the VGA configuration and per-layer gate statistics of a saved checkpoint."""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "info", help="print the VGA configuration and gate statistics of a saved checkpoint",
        description="Read a checkpoint folder (full, or gates-only from save_gates / patch --gates-only) without "
                    "building the model, and print its VGA configuration and, per gated layer, the gate weight "
                    "norm and the gate value at zero input s*sigmoid(b) (1.0 for untrained default gates).")
    parser.add_argument("dir", metavar="DIR", help="checkpoint folder")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import gate_statistics, read_vga_config

    config, raw = read_vga_config(args.dir)
    rows = gate_statistics(args.dir)
    if args.json:
        print(json.dumps({"vga_config": config.to_dict() if config else None, "layers": rows}, indent=2))
        return 0
    kind = raw.get("model_type") or (raw.get("base") or {}).get("model_type", "?")
    print(f"{args.dir}: model type {kind}")
    if config is None:
        print("no VGA configuration: a vanilla checkpoint (patch it with `vga-hf patch`)")
        return 0
    print("VGA configuration:")
    for key, value in config.to_dict().items():
        print(f"  {key:16s} {value}")
    print(f"{len(rows)} gated layers")
    print(f"  {'layer':>5} {'weight':>12} {'|W|':>10} {'max|W|':>10} {'bias':>9} {'g0 mean':>8} {'g0 min':>8} {'g0 max':>8}")
    for r in rows:
        shape = "x".join(map(str, r["weight_shape"] or []))
        print(f"  {r['layer']:>5} {shape:>12} {r['weight_norm']:>10.4g} {r['weight_max_abs']:>10.4g} "
              f"{r['bias_mean']:>9.4g} {r['gate0_mean']:>8.4f} {r['gate0_min']:>8.4f} {r['gate0_max']:>8.4f}")
    return 0
