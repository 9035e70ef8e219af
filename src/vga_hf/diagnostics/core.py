"""`diagnose(model, tokenizer, text)`: every metric of spec section 3 in one streamed pass.

One evaluation window at a time (batch 1): each forward scores the window's tokens (perplexity)
and, through hooks, reduces each layer's attention map, value vectors and hidden states to
statistics at once; nothing per layer is kept between forwards. Then, if enabled, simulated W8A8:
calibration forwards over calibration text, and the evaluation windows again, quantized.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .. import data as vdata
from ..patch import get_vga_config, is_patched
from .attention import AttentionStats, attention_probe
from .outliers import OutlierStats
from .perplexity import perplexity, window_nll
from .quant import W8A8
from .values import ValueStats

SCHEMA_VERSION = 1


@dataclass
class DiagnosticsSettings:
    """What `diagnose` measures and on how much text. Defaults: 8 evaluation windows of 256 tokens,
    4 calibration windows, i.e. 20 forwards; on SmolLM2-135M each costs about 6 CPU-seconds (2
    threads), so about 2 minutes on 2 idle cores (measured: 3 min 54 s of CPU time, 12 min wall
    on cores shared with 4 other jobs)."""

    data: str | None = field(default=None, metadata={"help": "Text source when no text is given: None/'shakespeare' "
                             "(eval = Hamlet, calibration = Macbeth), a local .txt/.jsonl file or folder, or "
                             "hf:NAME[:CONFIG][:SPLIT]. See vga_hf.data.read_text."})
    text_column: str = field(default="text", metadata={"help": "Text column of .jsonl / HF dataset sources."})
    window: int = field(default=256, metadata={"help": "Tokens per evaluation window (each one forward)."})
    stride: int | None = field(default=None, metadata={"help": "Step between windows (None: = window, no overlap); "
                               "< window scores each token with window - stride tokens of extra context "
                               "(HF strided perplexity)."})
    max_windows: int | None = field(default=8, metadata={"help": "Evaluation windows at most (None: all the text)."})
    calib_windows: int = field(default=4, metadata={"help": "W8A8 calibration windows (window tokens each, "
                               "from the calibration text, disjoint from the evaluation text)."})
    eps: float = field(default=0.3, metadata={"help": "Sink threshold on alpha_k (Gu et al. 2024)."})
    min_queries_frac: float = field(default=0.5, metadata={"help": "max_key_attention: only keys seen by at "
                                    "least this fraction of the queries are candidates."})
    w8a8: bool = field(default=True, metadata={"help": "Measure W8A8 perplexity (costs calib_windows + "
                       "max_windows extra forwards)."})
    w8a8_momentum: float = field(default=0.9, metadata={"help": "Running min-max momentum of activation ranges."})
    attention: bool = field(default=True, metadata={"help": "Probe attention maps (sink metrics)."})
    drain_skip_frac: float = field(default=0.1, metadata={"help": "Headline value drain averages the layers "
                                   "from round(drain_skip_frac * num_layers) on (layers 3-29 of 30)."})
    progress: bool = field(default=True, metadata={"help": "Show tqdm progress bars."})

    def __post_init__(self) -> None:
        if self.window < 3:
            raise ValueError(f"window must be >= 3 tokens, got {self.window}.")
        if self.stride is None:
            self.stride = self.window
        if not 0 < self.stride <= self.window:
            raise ValueError(f"need 0 < stride <= window, got stride={self.stride}, window={self.window}.")
        if self.max_windows is not None and self.max_windows < 1:
            raise ValueError(f"max_windows must be >= 1 or None, got {self.max_windows}.")
        if self.w8a8 and self.calib_windows < 1:
            raise ValueError("calib_windows must be >= 1 when w8a8 is on.")
        if not 0 < self.min_queries_frac <= 1:
            raise ValueError(f"min_queries_frac must be in (0, 1], got {self.min_queries_frac}.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _progress(iterable, enabled: bool, **kwargs):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, **kwargs)


def _model_info(model: nn.Module, name: str | None) -> dict[str, Any]:
    cfg = getattr(model, "config", None)
    text_cfg = getattr(cfg, "text_config", None) or cfg
    vga = get_vga_config(model)
    return {
        "name": name or str(getattr(cfg, "_name_or_path", "") or type(model).__name__).rstrip("/").rsplit("/", 1)[-1],
        "class": type(model).__name__,
        "model_type": getattr(text_cfg, "model_type", None),
        "num_layers": getattr(text_cfg, "num_hidden_layers", None),
        "num_heads": getattr(text_cfg, "num_attention_heads", None),
        "num_kv_heads": getattr(text_cfg, "num_key_value_heads", None) or getattr(text_cfg, "num_attention_heads", None),
        "attn_implementation": getattr(cfg, "_attn_implementation", None),
        "patched": is_patched(model),
        "vga_config": vga.to_dict() if vga is not None else None,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def _windows(ids: torch.Tensor, settings: DiagnosticsSettings) -> list[tuple[torch.Tensor, int]]:
    wins = [(w, c) for w, c in vdata.strided_windows(ids, settings.window, settings.stride, settings.max_windows)]
    wins = [(w, c) for w, c in wins if w.numel() >= 3]
    if not wins:
        raise ValueError(f"the evaluation text has {ids.numel()} tokens: too short for one window.")
    return wins


def _mean(values) -> float | None:
    flat = [v for row in values for v in (row if isinstance(row, (list, tuple)) else [row]) if v is not None]
    return float(sum(flat) / len(flat)) if flat else None


@torch.no_grad()
def diagnose(model: nn.Module, tokenizer=None, text: str | None = None, calib_text: str | None = None,
             settings: DiagnosticsSettings | None = None, *, eval_ids: torch.Tensor | None = None,
             calib_ids: torch.Tensor | None = None, name: str | None = None) -> dict[str, Any]:
    """Measure sinks, value drains, outliers, perplexity and W8A8 damage of `model` (patched or not).

    Text: `text` (evaluation) and `calib_text` (W8A8 calibration; must not overlap `text`), or when
    they are None the splits "eval" / "calib" of `settings.data` (default corpus: Hamlet / Macbeth).
    Pre-tokenised 1-D `eval_ids` / `calib_ids` may be given instead (then `tokenizer` may be None).
    Returns a JSON-able report (schema in `vga_hf.diagnostics.report`). The model is left as it was
    (mode, weights, attention backend)."""
    settings = settings or DiagnosticsSettings()
    t_start = time.perf_counter()
    if eval_ids is None:
        if tokenizer is None:
            raise ValueError("diagnose needs a tokenizer, or eval_ids (and calib_ids for W8A8).")
        if text is None:
            text = vdata.read_text(settings.data, "eval", settings.text_column)
        eval_ids = vdata.tokenize(tokenizer, text)
    if settings.w8a8 and calib_ids is None:
        if tokenizer is None:
            raise ValueError("diagnose with w8a8 needs calib_ids or a tokenizer (or settings.w8a8=False).")
        if calib_text is None:
            calib_text = vdata.read_text(settings.data, "calib", settings.text_column)
        calib_ids = vdata.tokenize(tokenizer, calib_text)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        report = _run(model, eval_ids, calib_ids, settings, device, name)
    finally:
        model.train(was_training)
    report["runtime_s"]["total"] = round(time.perf_counter() - t_start, 2)
    return report


def _score(model, windows, device, progress: bool, desc: str, after=None) -> tuple[float, int]:
    """Summed NLL and scored-token count over the windows, one forward per window."""
    total, count = 0.0, 0
    for ids, n_context in _progress(windows, progress, desc=desc, unit="window"):
        logits = model(ids[None].to(device), use_cache=False).logits
        nll, n = window_nll(logits, ids, n_context)
        del logits
        total, count = total + nll, count + n
        if after is not None:
            after()
    return total, count


def _run(model, eval_ids, calib_ids, settings, device, name) -> dict[str, Any]:
    windows = _windows(eval_ids, settings)
    attn = AttentionStats(settings.eps, settings.min_queries_frac)
    values = ValueStats(model)
    outl = OutlierStats(model)
    runtime = {}
    t0 = time.perf_counter()
    import contextlib

    probe = attention_probe(model, attn) if settings.attention else contextlib.nullcontext()
    with probe, values.capture(), outl.capture():
        total_nll, n_scored = _score(model, windows, device, settings.progress, "diagnose: fp32", values.collect)
    runtime["fp32"] = round(time.perf_counter() - t0, 2)
    ppl = perplexity(total_nll, n_scored)

    w8a8_ppl, calib_info = None, None
    if settings.w8a8:
        t0 = time.perf_counter()
        q = W8A8(model, momentum=settings.w8a8_momentum)
        calib = list(vdata.strided_windows(calib_ids, settings.window, settings.window, settings.calib_windows))
        with q.calibrating():
            for ids, _ in _progress(calib, settings.progress, desc="diagnose: W8A8 calibration", unit="window"):
                model(ids[None].to(device), use_cache=False)
        with q.quantized():
            q_nll, q_n = _score(model, windows, device, settings.progress, "diagnose: W8A8")
        w8a8_ppl = perplexity(q_nll, q_n)
        calib_info = {"windows": len(calib), "tokens": int(sum(w.numel() for w, _ in calib)),
                      "linear_layers": len(q.linears)}
        runtime["w8a8"] = round(time.perf_counter() - t0, 2)

    return _assemble(model, name, settings, windows, eval_ids, n_scored, ppl, w8a8_ppl, calib_info,
                     attn if settings.attention else None, values, outl, runtime)


def _assemble(model, name, settings, windows, eval_ids, n_scored, ppl, w8a8_ppl, calib_info,
              attn, values, outl, runtime) -> dict[str, Any]:
    info = _model_info(model, name)
    layers = outl.layers() or values.layers() or (attn.layers() if attn else [])
    n_layers = len(layers)
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "model": info,
        "settings": {**settings.to_dict(), "eval_tokens": int(eval_ids.numel()), "windows": len(windows),
                     "scored_tokens": n_scored, "calibration": calib_info},
        "layers": layers,
        "perplexity": ppl,
        "w8a8_perplexity": w8a8_ppl,
        "w8a8_gap": (w8a8_ppl - ppl) if w8a8_ppl is not None else None,
    }
    if attn is not None and attn.layers():
        a0 = attn.mean("first_token_attention")
        sink = attn.mean("sink")
        report.update({
            "first_token_attention": a0,
            "alpha_first": attn.mean("alpha_first"),
            "sink_rate": 100.0 * _mean(sink),
            "sink_rate_per_layer": [100.0 * sum(r) / len(r) for r in sink],
            "second_token_attention": attn.mean("second_token_attention"),
            "max_key_attention": {
                "value": attn.mean("max_key_attention"),
                "position": attn.modal_max_key_position(),
                "first_fraction": attn.mean("max_key_is_first"),
                "sink_rate": 100.0 * _mean(attn.mean("max_key_sink")),
                "min_queries_frac": settings.min_queries_frac,
            },
        })
    else:
        report.update({"first_token_attention": None, "alpha_first": None, "sink_rate": None,
                       "sink_rate_per_layer": None, "second_token_attention": None, "max_key_attention": None})
    skip = int(round(settings.drain_skip_frac * n_layers))
    drain_layers = values.layers()[skip:]
    ungated, gated = values.mean("ungated"), values.mean("gated")
    pick = [i for i, l in enumerate(values.layers()) if l in drain_layers]
    report["value_drain"] = {
        "ungated": ungated,
        "gated": gated,
        "headline_layers": drain_layers,
        "mean_ungated": _mean([ungated[i] for i in pick]) if ungated else None,
        "mean_gated": _mean([gated[i] for i in pick]) if gated else None,
    }
    g_first, g_rest = values.mean("gate_first"), values.mean("gate_rest")
    if g_first is not None:
        report["gates"] = {
            "layers": [l for l in values.layers() if "gate_first" in values.sums[l]],
            "first": [r for r in g_first if r is not None],
            "rest": [r for r in g_rest if r is not None],
            "mean_first": _mean(g_first),
            "mean_rest": _mean(g_rest),
            "histogram": {"edges": values.edges.tolist(), "first": values.hist_first.tolist(),
                          "rest": values.hist_rest.tolist()},
        }
    else:
        report["gates"] = None
    kpl = outl.kurtosis_per_layer()
    report.update({
        "kurtosis": float(sum(kpl) / len(kpl)) if kpl else None,
        "kurtosis_per_layer": kpl,
        "max_inf_norm": max(outl.max_all.values()) if outl.max_all else None,
        "max_inf_norm_excl_first": max(outl.max_excl.values()) if outl.max_excl else None,
        "max_inf_norm_per_layer": [outl.max_all[l] for l in outl.layers()],
        "max_inf_norm_excl_first_per_layer": [outl.max_excl.get(l) for l in outl.layers()],
        "max_inf_norm_position": [outl.max_pos[l] for l in outl.layers()],
    })
    report["runtime_s"] = runtime
    report["summary"] = summarize(report)
    return report


def summarize(report: dict[str, Any]) -> dict[str, float | None]:
    """Flat headline numbers of a report (the before/after table of a retrofit)."""
    mka = report.get("max_key_attention") or {}
    gates = report.get("gates") or {}
    return {
        "perplexity": report.get("perplexity"),
        "w8a8_perplexity": report.get("w8a8_perplexity"),
        "w8a8_gap": report.get("w8a8_gap"),
        "sink_rate": report.get("sink_rate"),
        "first_token_attention": _mean(report["first_token_attention"]) if report.get("first_token_attention") else None,
        "second_token_attention": _mean(report["second_token_attention"]) if report.get("second_token_attention") else None,
        "max_key_attention": _mean(mka["value"]) if mka else None,
        "max_key_sink_rate": mka.get("sink_rate") if mka else None,
        "max_key_not_first": (100.0 * (1 - _mean(mka["first_fraction"]))) if mka else None,
        "value_drain": (report.get("value_drain") or {}).get("mean_gated"),
        "value_drain_ungated": (report.get("value_drain") or {}).get("mean_ungated"),
        "kurtosis": report.get("kurtosis"),
        "max_inf_norm": report.get("max_inf_norm"),
        "max_inf_norm_excl_first": report.get("max_inf_norm_excl_first"),
        "gate_first": gates.get("mean_first"),
        "gate_rest": gates.get("mean_rest"),
    }
