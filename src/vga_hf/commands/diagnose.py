"""`vga-hf diagnose MODEL [--compare MODEL2] [--data SOURCE] [--out DIR]`: measure attention sinks,
value-state drains, activation outliers, perplexity and W8A8 damage; write report.json, summary.md
and PNG plots (both models side by side with --compare)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

DEFAULT_OUT = "diagnostics"


def load_model(spec: str, attn_implementation: str = "sdpa", dtype: str = "float32"):
    """(model, tokenizer, label) for MODEL: "smollm2" (embedded SmolLM2-135M-Instruct) or a local HF folder
    (a VGA-patched checkpoint loads with its gates through vga_hf.from_pretrained when available)."""
    import torch

    torch_dtype = getattr(torch, dtype)
    if spec.lower() in ("smollm2", "smollm2-135m"):
        from ..assets import load_smollm2

        model, tok = load_smollm2(attn_implementation=attn_implementation, dtype=torch_dtype)
        return model, tok, "SmolLM2-135M-Instruct"
    folder = Path(spec)
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"{spec}: not 'smollm2' and not a local model folder with a config.json.")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import vga_hf

    loader = getattr(vga_hf, "from_pretrained", None)
    kwargs = dict(dtype=torch_dtype, attn_implementation=attn_implementation)
    if loader is not None:
        model = loader(str(folder), **kwargs)
    else:
        model = AutoModelForCausalLM.from_pretrained(str(folder), **kwargs)
    tok = AutoTokenizer.from_pretrained(str(folder))
    return model.eval(), tok, folder.name


def register(subparsers) -> None:
    from ..diagnostics import DiagnosticsSettings

    defaults = DiagnosticsSettings()
    p = subparsers.add_parser(
        "diagnose", help="measure sinks, value drains, outliers, perplexity and W8A8 damage of a model",
        description=__doc__)
    p.add_argument("model", metavar="MODEL", help="'smollm2' (embedded SmolLM2-135M-Instruct) or a local HF model "
                   "folder, VGA-patched or not")
    p.add_argument("--compare", metavar="MODEL2", default=None,
                   help="a second model (same forms as MODEL), measured on the same text and shown side by side")
    p.add_argument("--label", default=None, help="column label of MODEL in tables and plots (default: its name)")
    p.add_argument("--compare-label", default=None, help="column label of MODEL2")
    p.add_argument("--data", default=None, help="text source: 'shakespeare' (default; evaluation Hamlet, calibration "
                   "Macbeth), a local .txt/.jsonl file or folder, or hf:NAME[:CONFIG][:SPLIT] (online or HF cache)")
    p.add_argument("--calib-data", default=None, help="W8A8 calibration text source (default: the 'calib' split of "
                   "--data; for a local file --data, give a different file here, or its text is split in two halves)")
    p.add_argument("--text-column", default=defaults.text_column, help="text column of .jsonl / HF datasets (default: %(default)s)")
    p.add_argument("--out", default=DEFAULT_OUT, help="output folder for report.json, summary.md and PNGs (default: %(default)s)")
    p.add_argument("--window", type=int, default=defaults.window, help="tokens per evaluation window (default: %(default)s)")
    p.add_argument("--stride", type=int, default=None, help="step between evaluation windows (default: --window, "
                   "non-overlapping; smaller gives each scored token more context)")
    p.add_argument("--max-windows", type=int, default=defaults.max_windows,
                   help="evaluation windows at most (0: the whole text) (default: %(default)s)")
    p.add_argument("--calib-windows", type=int, default=defaults.calib_windows, help="W8A8 calibration windows (default: %(default)s)")
    p.add_argument("--eps", type=float, default=defaults.eps, help="sink threshold on alpha_k (default: %(default)s)")
    p.add_argument("--min-queries-frac", type=float, default=defaults.min_queries_frac,
                   help="largest key attention: only keys seen by at least this fraction of queries (default: %(default)s)")
    p.add_argument("--no-w8a8", action="store_true", help="skip the W8A8 measurement (saves about half the time)")
    p.add_argument("--attn-implementation", default="sdpa", help="attention backend to load the model with "
                   "(eager, sdpa, flex_attention); the probe works with any (default: %(default)s)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="weights dtype (default: %(default)s)")
    p.add_argument("--no-plots", action="store_true", help="write report.json and summary.md only")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _texts(args):
    """(eval text, calib text) for local single-file sources without a 'calib' split: halves."""
    from .. import data as vdata

    if args.calib_data is not None:
        return vdata.read_text(args.data, "eval", args.text_column), vdata.read_text(args.calib_data, "calib", args.text_column)
    if args.data is None or args.data == vdata.DEFAULT_SOURCE or args.data.startswith("hf:"):
        return None, None
    text = vdata.read_text(args.data, "eval", args.text_column)
    half = len(text) // 2
    return text[:half], text[half:]


def run(args) -> int:
    from ..diagnostics import DiagnosticsSettings, diagnose, write_report

    settings = DiagnosticsSettings(
        data=args.data, text_column=args.text_column, window=args.window, stride=args.stride or args.window,
        max_windows=args.max_windows or None, calib_windows=args.calib_windows, eps=args.eps,
        min_queries_frac=args.min_queries_frac, w8a8=not args.no_w8a8, progress=not args.quiet)
    text, calib_text = _texts(args)
    reports = {}
    for spec, label in ((args.model, args.label), (args.compare, args.compare_label)):
        if spec is None:
            continue
        t0 = time.perf_counter()
        model, tok, name = load_model(spec, args.attn_implementation, args.dtype)
        label = label or name
        if label in reports:
            label = f"{label} ({len(reports) + 1})"
        print(f"vga-hf diagnose: {label} loaded in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        reports[label] = diagnose(model, tok, text, calib_text, settings, name=name)
        del model
    paths = write_report(reports, args.out, plots=not args.no_plots)
    from ..diagnostics.report import summary_table

    print(summary_table(reports))
    print(f"\nwrote {', '.join(str(p) for p in paths.values())}")
    return 0
