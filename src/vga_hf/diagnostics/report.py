"""Report files: `report.json` (versioned schema), `summary.md`, PNG plots; several models side by side.

Schema, version 1 (`report["schema_version"] == 1`). `L` = decoder layers (in `layers` order),
`H` = query heads, `K` = kv heads. Percentages are 0-100.

    schema_version   int
    model            {name, class, model_type, num_layers, num_heads, num_kv_heads,
                      attn_implementation, patched, vga_config, parameters}
    settings         DiagnosticsSettings fields + eval_tokens, windows, scored_tokens,
                     calibration {windows, tokens, linear_layers} | null
    layers           [L] layer indices
    perplexity       float   exp(mean NLL) over the strided windows (settings.window / stride)
    w8a8_perplexity  float | null   the same under simulated W8A8 (quant.py)
    w8a8_gap         float | null   w8a8_perplexity - perplexity
    first_token_attention  [L][H]   A0 = mean over queries i>=1 of a_i0, mean over windows
    alpha_first      [L][H]   alpha_0 = column mean of key 0 over all queries (Gu et al.)
    sink_rate        float    % of (layer, head) pairs with alpha_0 > eps, mean over windows
    sink_rate_per_layer    [L] %
    second_token_attention [L][H]   mean over queries i>=2 of a_i1 (attention to position 1)
    max_key_attention {value [L][H]: largest alpha_k over keys seen by >= min_queries_frac of the
                       queries (a sink on any token), mean over windows;
                       position [L][H]: the key position that most often holds it;
                       first_fraction [L][H]: share of windows where it is position 0;
                       sink_rate: % of (layer, head) pairs whose largest alpha_k > eps;
                       min_queries_frac}
    value_drain      {ungated [L][K], gated [L][K]: |v_0| / mean_{j>=1} |v_j| before / after the
                      gate (equal when unpatched); headline_layers; mean_ungated, mean_gated:
                      their means over headline_layers}
    gates            null (unpatched) | {layers, first [L][K], rest [L][K]: mean gate on position 0
                      / on the others; mean_first, mean_rest; histogram {edges, first, rest}}
    kurtosis         float    mean over layers and tokens of the per-token kurtosis
    kurtosis_per_layer          [L]
    max_inf_norm     float    max |hidden state| over decoder-layer outputs
    max_inf_norm_excl_first     float   the same without position 0
    max_inf_norm_per_layer, max_inf_norm_excl_first_per_layer, max_inf_norm_position   [L]
    runtime_s        {fp32, w8a8, total}
    summary          flat headline numbers (core.summarize): perplexity, w8a8_perplexity,
                     w8a8_gap, sink_rate, first_token_attention, second_token_attention,
                     max_key_attention, max_key_sink_rate, max_key_not_first, value_drain,
                     value_drain_ungated, kurtosis, max_inf_norm, max_inf_norm_excl_first,
                     gate_first, gate_rest

`report.json` written by `write_report` holds `{"schema_version": 1, "reports": {label: report}}`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .core import SCHEMA_VERSION

#: (summary key, table label, format, what it means)
SUMMARY_ROWS = [
    ("perplexity", "perplexity (fp32)", "{:.2f}", "exp of the mean next-token loss over the windows"),
    ("w8a8_perplexity", "perplexity (W8A8)", "{:.2f}", "the same with weights and linear inputs in int8"),
    ("w8a8_gap", "W8A8 gap", "{:+.2f}", "W8A8 minus fp32 perplexity: damage done by int8"),
    ("sink_rate", "sink rate, position 0 (%)", "{:.1f}", "% of (layer, head) with alpha_0 > eps"),
    ("first_token_attention", "first-token attention", "{:.3f}", "mean a_i0 over queries i >= 1, layers, heads"),
    ("second_token_attention", "attention to position 1", "{:.3f}", "mean a_i1 over queries i >= 2"),
    ("max_key_attention", "largest key attention", "{:.3f}", "per head the largest column mean alpha_k, any key"),
    ("max_key_sink_rate", "sink rate, any key (%)", "{:.1f}", "% of (layer, head) whose largest alpha_k > eps"),
    ("max_key_not_first", "largest key not position 0 (%)", "{:.1f}", "% of (layer, head, window) parking elsewhere"),
    ("value_drain", "value drain (gated)", "{:.3f}", "|v_0| / mean |v_j>=1| after the gate, headline layers"),
    ("value_drain_ungated", "value drain (ungated)", "{:.3f}", "the same before the gate"),
    ("kurtosis", "kurtosis", "{:.1f}", "mean per-token kurtosis of hidden states (Gaussian: 3)"),
    ("max_inf_norm", "max abs activation", "{:.1f}", "largest hidden-state entry"),
    ("max_inf_norm_excl_first", "max abs activation, pos 0 excluded", "{:.1f}", "the same without position 0"),
    ("gate_first", "mean gate, position 0", "{:.3f}", "VGA gate on the first token (1 = open as at init)"),
    ("gate_rest", "mean gate, other positions", "{:.3f}", "VGA gate on the other tokens"),
]


def _fmt(value, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return fmt.format(value)


def _esc(text: str) -> str:
    return text.replace("|", "\\|")


def summary_table(reports: dict[str, dict[str, Any]]) -> str:
    """Markdown table of the headline numbers, one column per report."""
    labels = list(reports)
    lines = ["| metric | " + " | ".join(labels) + " | meaning |", "|---|" + "---|" * len(labels) + "---|"]
    for key, label, fmt, meaning in SUMMARY_ROWS:
        cells = [_fmt((r.get("summary") or {}).get(key), fmt) for r in reports.values()]
        if all(c == "-" for c in cells):
            continue
        lines.append(f"| {_esc(label)} | " + " | ".join(cells) + f" | {_esc(meaning)} |")
    return "\n".join(lines)


def _per_layer_table(reports: dict[str, dict[str, Any]]) -> str:
    labels = list(reports)
    cols = []
    for lab in labels:
        cols += [f"A0 {lab}", f"sink % {lab}", f"drain {lab}", f"max-key {lab}"]
    lines = ["| layer | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    first = next(iter(reports.values()))
    for i, layer in enumerate(first.get("layers") or []):
        cells = []
        for r in reports.values():
            def row_mean(x):
                if not x or i >= len(x) or x[i] is None:
                    return None
                return sum(x[i]) / len(x[i])
            cells += [_fmt(row_mean(r.get("first_token_attention")), "{:.3f}"),
                      _fmt((r.get("sink_rate_per_layer") or [None] * (i + 1))[i] if r.get("sink_rate_per_layer") else None, "{:.0f}"),
                      _fmt(row_mean((r.get("value_drain") or {}).get("gated")), "{:.3f}"),
                      _fmt(row_mean((r.get("max_key_attention") or {}).get("value")), "{:.3f}")]
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(reports: dict[str, dict[str, Any]], plots: list[str] | None = None) -> str:
    """The `summary.md` text for one or several reports."""
    first = next(iter(reports.values()))
    s = first["settings"]
    out = ["# vga_hf diagnostics", ""]
    for label, r in reports.items():
        m = r["model"]
        out.append(f"- **{label}**: {m['name']} ({m['model_type']}, {m['num_layers']} layers, {m['num_heads']} heads, "
                   f"{m['num_kv_heads']} kv heads, {'VGA-patched' if m['patched'] else 'not patched'}), "
                   f"{r['settings']['windows']} windows, {r['settings']['scored_tokens']} tokens scored, "
                   f"{r['runtime_s'].get('total', 0):.0f} s")
    calib = s.get("calibration") or {}
    out += ["", f"Text: `{s.get('data') or 'shakespeare'}` (evaluation {s['eval_tokens']} tokens); window {s['window']}, "
            f"stride {s['stride']}, at most {s['max_windows']} windows; eps {s['eps']}; W8A8 "
            + (f"calibrated on {calib.get('windows')} windows ({calib.get('tokens')} tokens) of separate text."
               if s.get("w8a8") else "off."),
            "", "## Headline numbers", "", summary_table(reports), "",
            "## Per layer (means over heads)", "",
            "A0: first-token attention; sink %: heads with alpha_0 > eps; drain: gated value-drain ratio; "
            "max-key: largest column mean of the attention map.", "", _per_layer_table(reports), ""]
    if plots:
        out += ["## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots] + [""]
    return "\n".join(out)


def write_report(reports: dict[str, dict[str, Any]] | dict[str, Any], out_dir, plots: bool = True) -> dict[str, Path]:
    """Write `report.json`, `summary.md` and (if `plots`) PNGs into `out_dir`.

    `reports` maps a label (e.g. "before", "after") to a report from `diagnose`; a single report
    dict is accepted too (label = its model name). Returns {"json", "markdown", <plot name>: path}."""
    if "schema_version" in reports and "summary" in reports:
        reports = {str(reports["model"]["name"]): reports}
    if not reports:
        raise ValueError("write_report: no reports given.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    if plots:
        from .plots import plot_reports

        paths.update(plot_reports(reports, out))
    json_path = out / "report.json"
    json_path.write_text(json.dumps({"schema_version": SCHEMA_VERSION, "reports": reports}, indent=1,
                                    default=_json_default) + "\n")
    md_path = out / "summary.md"
    md_path.write_text(markdown(reports, [str(p) for p in paths.values()]))
    paths["json"], paths["markdown"] = json_path, md_path
    return paths


def load_reports(path) -> dict[str, dict[str, Any]]:
    """Read a `report.json` written by `write_report` (or a single report); checks the schema version."""
    data = json.loads(Path(path).read_text())
    version = data.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise ValueError(f"{path}: report schema version {version!r}; this vga_hf reads <= {SCHEMA_VERSION}.")
    return data["reports"] if "reports" in data else {str(data["model"]["name"]): data}


def _json_default(obj):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
