#!/usr/bin/env python
"""Training throughput and peak memory of the retrofit modes on the same model, in one run.

    python benchmarks/train_throughput.py                       # SmolLM2-135M, gates vs full (~3 min on 2 CPU cores)
    python benchmarks/train_throughput.py --model tiny:llama --modes gates,gates+lora,full --steps 5

Each mode runs in a fresh child process (so that peak memory is its own): load the model, patch it
with VGA, choose what trains exactly as recipes/retrofit.py does (vga_hf.training), then time
`--steps` optimizer steps (AdamW, batch x block tokens, after `--warmup` untimed steps) on random
tokens. Reported: tokens/s, peak memory (CUDA: max allocated; CPU: the process's peak resident set,
and its growth over the loaded model), trainable parameters, and the ratios of each mode to the first.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import time


def _rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _load(model_name: str):
    import torch
    from transformers import AutoModelForCausalLM

    if model_name.startswith("tiny:"):
        from vga_hf.testing import tiny_model

        return tiny_model(model_name[5:], attn_implementation="sdpa")
    if model_name in ("smollm2", "default"):
        from vga_hf.assets import smollm2_folder

        model_name = str(smollm2_folder("llama"))
    return AutoModelForCausalLM.from_pretrained(model_name, dtype=torch.float32, attn_implementation="sdpa")


def measure(mode: str, args: dict) -> dict:
    """One mode, in this process."""
    import torch

    import vga_hf
    from vga_hf import training

    torch.manual_seed(0)
    if args["threads"]:
        torch.set_num_threads(args["threads"])
    model = _load(args["model"])
    vga_hf.patch_model(model)
    model.config.use_cache = False
    if args["gradient_checkpointing"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = training.setup_trainable(model, mode, vga=True).to(device).train()
    optimizer = torch.optim.AdamW(training.optimizer_param_groups(model, lr=2e-5, gate_lr=3e-3), betas=(0.9, 0.95))
    trainable, total = training.count_parameters(model)
    vocab = model.config.vocab_size if hasattr(model, "config") else model.get_base_model().config.vocab_size
    batch = torch.randint(3, vocab, (args["batch_size"], args["block_len"]), device=device)
    rss_loaded = _rss_mib()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step():
        loss = model(input_ids=batch, labels=batch, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(args["warmup"]):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args["steps"]):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    tokens = args["steps"] * args["batch_size"] * args["block_len"]
    out = {"mode": mode, "device": device.type, "trainable_params": trainable, "total_params": total,
           "tokens_per_second": tokens / seconds, "seconds_per_step": seconds / args["steps"],
           "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "loaded_rss_mib": rss_loaded}
    out["rss_growth_mib"] = out["peak_rss_mib"] - rss_loaded
    if device.type == "cuda":
        out["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _child(mode: str, args: dict, queue) -> None:
    try:
        queue.put(measure(mode, args))
    except Exception as err:  # report, do not hang the parent
        queue.put({"mode": mode, "error": f"{type(err).__name__}: {err}"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", help="smollm2 (default: SmolLM2-135M, cached), a local HF "
                        "folder, or tiny:<type> (random 2-layer model built in code).")
    parser.add_argument("--modes", default="gates,full", help="Comma-separated: gates, gates+lora, full.")
    parser.add_argument("--steps", type=int, default=3, help="Timed optimizer steps per mode.")
    parser.add_argument("--warmup", type=int, default=1, help="Untimed steps first.")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--block-len", type=int, default=128)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default).")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--json", help="Also write the results to this JSON file.")
    args = parser.parse_args(argv)
    settings = {k: getattr(args, k) for k in ("model", "steps", "warmup", "batch_size", "block_len", "threads",
                                              "gradient_checkpointing")}
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    ctx = mp.get_context("spawn")
    results = []
    for mode in modes:
        queue = ctx.Queue()
        proc = ctx.Process(target=_child, args=(mode, settings, queue))
        proc.start()
        result = queue.get()
        proc.join()
        if "error" in result:
            print(f"{mode}: failed: {result['error']}", file=sys.stderr)
            return 1
        results.append(result)
        print(f"{mode}: {result['tokens_per_second']:.1f} tokens/s, {result['seconds_per_step']:.2f} s/step, "
              f"peak RSS {result['peak_rss_mib']:.0f} MiB (+{result['rss_growth_mib']:.0f} over the loaded model)"
              + (f", peak CUDA {result['peak_cuda_mib']:.0f} MiB" if "peak_cuda_mib" in result else ""), flush=True)

    ref = results[0]
    mem_key = "peak_cuda_mib" if "peak_cuda_mib" in ref else "peak_rss_mib"
    print(f"\nmodel {args.model}; {args.batch_size} x {args.block_len} tokens per step; {args.steps} timed steps; "
          f"device {ref['device']}\n")
    print("| mode | trainable params | tokens/s | s/step | peak memory (MiB) | growth (MiB) | "
          f"tokens/s vs {ref['mode']} | memory vs {ref['mode']} |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['mode']} | {r['trainable_params']:,} | {r['tokens_per_second']:.1f} | {r['seconds_per_step']:.2f} | "
              f"{r[mem_key]:.0f} | {r['rss_growth_mib']:.0f} | {r['tokens_per_second'] / ref['tokens_per_second']:.2f}x | "
              f"{r[mem_key] / ref[mem_key]:.2f}x |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"settings": settings, "results": results}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
