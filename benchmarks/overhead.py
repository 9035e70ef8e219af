"""Overhead of VGA gates vs the unpatched model, measured in one run.

    python benchmarks/overhead.py                 # SmolLM2-135M shape, random weights, CPU
    python benchmarks/overhead.py --device cuda --dtype bfloat16 --attn sdpa

Prints, for VGA head gates, VGA element gates and IGA, the ratios patched/unpatched of prefill
latency (--seq tokens), decode tokens/s with the KV cache, and peak memory of a prefill, plus the
parameters added. Targets (issue 2): VGA head latency ratio <= 1.03, parameters added <= 0.02 %.
Latency runs are interleaved across variants (round robin) so that machine drift hits all alike;
the median is reported. On CPU the clock is the process's CPU time with --threads threads (default
1), so that other load on a shared machine does not count; on GPU it is wall time. CPU peak memory is the peak RSS (weights included) of a fresh subprocess
per variant that builds the model and runs one prefill; on CUDA it is max_memory_allocated of a prefill.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
from transformers import AutoModelForCausalLM

import vga_hf
from vga_hf.testing import smollm2_config

VARIANTS = {
    "unpatched": None,
    "VGA head": dict(granularity="head", gate_input="value"),
    "VGA element": dict(granularity="element", gate_input="value"),
    "IGA head": dict(granularity="head", gate_input="input"),
}


def build(variant: str, args) -> torch.nn.Module:
    torch.manual_seed(0)
    config = smollm2_config(num_hidden_layers=args.layers)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=args.attn, dtype=getattr(torch, args.dtype))
    model = model.to(args.device).eval()
    if VARIANTS[variant] is not None:
        vga_hf.patch_model(model, **VARIANTS[variant])
    return model


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def clock(device: str) -> float:
    """Wall time on GPU; CPU time of this process on CPU (robust to other load on a shared machine)."""
    return time.perf_counter() if device.startswith("cuda") else time.process_time()


@torch.inference_mode()
def prefill_seconds(model, ids, device) -> float:
    sync(device)
    t0 = clock(device)
    model(ids, use_cache=False)
    sync(device)
    return clock(device) - t0


@torch.inference_mode()
def decode_tokens_per_s(model, prompt, new_tokens, device) -> float:
    out = model(prompt, use_cache=True)
    cache, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
    sync(device)
    t0 = clock(device)
    for _ in range(new_tokens):
        out = model(nxt, cache=cache, use_cache=True)
        cache, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
    sync(device)
    return new_tokens / (clock(device) - t0)


def peak_memory_mb(variant: str, args) -> float:
    if args.device.startswith("cuda"):
        model = build(variant, args)
        ids = torch.randint(0, 49152, (1, args.seq), device=args.device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        prefill_seconds(model, ids, args.device)
        peak = torch.cuda.max_memory_allocated() / 2**20
        del model
        return peak
    cmd = [sys.executable, __file__, "--_memory-child", variant, *sys.argv[1:]]
    result = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return float(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=30, help="decoder layers (SmolLM2-135M has 30)")
    parser.add_argument("--seq", type=int, default=512, help="prefill length in tokens")
    parser.add_argument("--repeats", type=int, default=5, help="timed prefills per variant (median reported)")
    parser.add_argument("--decode-tokens", type=int, default=32, help="tokens decoded with the KV cache")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--attn", default="sdpa", help="attention backend (eager, sdpa, flash_attention_2, ...)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (CPU time is what is measured on CPU)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--_memory-child", dest="memory_child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.memory_child:  # fresh process: peak RSS of one prefill, in MiB
        model = build(args.memory_child, args)
        prefill_seconds(model, torch.randint(0, 49152, (1, args.seq)), "cpu")
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        return

    models = {name: build(name, args) for name in VARIANTS}
    ids = torch.randint(0, 49152, (1, args.seq), device=args.device)
    prompt = ids[:, :64]
    for model in models.values():  # warm-up
        prefill_seconds(model, ids[:, :64], args.device)
    times = {name: [] for name in models}
    for _ in range(args.repeats):
        for name, model in models.items():
            times[name].append(prefill_seconds(model, ids, args.device))
    decode = {name: [] for name in models}
    for _ in range(3):
        for name, model in models.items():
            decode[name].append(decode_tokens_per_s(model, prompt, args.decode_tokens, args.device))
    base_params = sum(p.numel() for p in models["unpatched"].parameters())
    results = {}
    for name, model in models.items():
        added = sum(p.numel() for p in vga_hf.gate_parameters(model)) if name != "unpatched" else 0
        results[name] = dict(prefill_s=statistics.median(times[name]), decode_tok_s=statistics.median(decode[name]),
                             params_added=added, params_added_pct=100 * added / base_params)
    del models
    for name in VARIANTS:
        results[name]["peak_mem_mb"] = peak_memory_mb(name, args)

    ref = results["unpatched"]
    print(f"# benchmarks/overhead.py: {args.layers} layers SmolLM2-135M shape, random weights, device={args.device}, "
          f"dtype={args.dtype}, attn={args.attn}, prefill {args.seq} tokens x{args.repeats} (median), "
          f"decode {args.decode_tokens} tokens; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"clock: {'wall' if args.device.startswith('cuda') else 'process CPU time'}")
    print("| variant | prefill latency ratio | decode tok/s ratio | peak memory ratio | params added | % of model |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['prefill_s'] / ref['prefill_s']:.3f} ({r['prefill_s'] * 1000:.0f} ms) | "
              f"{r['decode_tok_s'] / ref['decode_tok_s']:.3f} ({r['decode_tok_s']:.1f}) | "
              f"{r['peak_mem_mb'] / ref['peak_mem_mb']:.3f} ({r['peak_mem_mb']:.0f} MiB) | "
              f"{r['params_added']:,} | {r['params_added_pct']:.4f} |")
    head = results["VGA head"]
    ok_lat = head["prefill_s"] / ref["prefill_s"] <= 1.03
    ok_par = head["params_added_pct"] <= 0.02
    print(f"targets (VGA head): latency ratio <= 1.03: {'PASS' if ok_lat else 'FAIL'}; "
          f"params added <= 0.02 %: {'PASS' if ok_par else 'FAIL'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(settings=vars(args), results=results), f, indent=2)


if __name__ == "__main__":
    main()
