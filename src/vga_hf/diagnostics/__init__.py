"""Diagnostics of extreme-token phenomena (spec section 3): attention sinks, value-state drains,
activation outliers, perplexity and W8A8 damage; JSON / Markdown / PNG reports.

    from vga_hf.diagnostics import diagnose, write_report
    report = diagnose(model, tokenizer)                  # default corpus: Hamlet / Macbeth
    write_report({"before": report}, "out/")

The attention probe (`attention_probe`) also serves training (sink penalty).
"""

from .attention import (
    AttentionStats,
    attention_layers,
    attention_probe,
    attention_probs,
    first_token_attention,
    key_importance,
    max_key_attention,
    position_attention,
    sink_flags,
)
from .core import SCHEMA_VERSION, DiagnosticsSettings, diagnose, summarize
from .outliers import kurtosis
from .quant import W8A8, quantize_asymmetric, quantize_symmetric
from .report import load_reports, markdown, summary_table, write_report
from .values import drain_ratio

__all__ = [
    "AttentionStats", "DiagnosticsSettings", "SCHEMA_VERSION", "W8A8", "attention_layers", "attention_probe",
    "attention_probs", "diagnose", "drain_ratio", "first_token_attention", "key_importance", "kurtosis",
    "load_reports", "markdown", "max_key_attention", "position_attention", "quantize_asymmetric",
    "quantize_symmetric", "sink_flags", "summarize", "summary_table", "write_report",
]
