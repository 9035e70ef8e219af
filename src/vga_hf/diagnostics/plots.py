"""PNG plots of one or several reports (side by side): first-token attention per layer, layer x head
heatmaps, value-drain ratio per layer, gate distribution. matplotlib, Agg backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

COLORS = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _finish(plt, fig, ax, path: Path, xlabel: str, ylabel: str, title: str) -> Path:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _row_means(x):
    return [sum(r) / len(r) if r else float("nan") for r in x]


def plot_reports(reports: dict[str, dict[str, Any]], out_dir) -> dict[str, Path]:
    """Write the PNGs into `out_dir`; returns {plot name: path}. Plots without data are skipped."""
    plt = _plt()
    out = Path(out_dir)
    paths: dict[str, Path] = {}
    labels = list(reports)

    # 1. first-token attention (and largest key attention) per layer
    if any(r.get("first_token_attention") for r in reports.values()):
        fig, ax = plt.subplots(figsize=(7, 3.5))
        for i, (lab, r) in enumerate(reports.items()):
            if not r.get("first_token_attention"):
                continue
            c = COLORS[i % len(COLORS)]
            ax.plot(r["layers"], _row_means(r["first_token_attention"]), "o-", color=c, label=f"{lab}: position 0")
            mka = r.get("max_key_attention")
            if mka:
                ax.plot(r["layers"], _row_means(mka["value"]), "x--", color=c, alpha=0.7, label=f"{lab}: largest key")
        ax.set_ylim(0, 1)
        paths["first_token_attention"] = _finish(plt, fig, ax, out / "first_token_attention.png", "layer", "attention (mean over heads)",
                                 "First-token attention A0 and largest key attention per layer")

    # 2. layer x head heatmap of A0, one panel per report
    with_a0 = [(lab, r) for lab, r in reports.items() if r.get("first_token_attention")]
    if with_a0:
        fig, axes = plt.subplots(1, len(with_a0), figsize=(3.2 * len(with_a0) + 1, 5), squeeze=False)
        im = None
        for ax, (lab, r) in zip(axes[0], with_a0):
            im = ax.imshow(r["first_token_attention"], aspect="auto", vmin=0, vmax=1, cmap="viridis",
                           interpolation="nearest")
            ax.set_title(f"{lab}: sink rate {r['sink_rate']:.0f}%", fontsize=9)
            ax.set_xlabel("head")
            ax.set_ylabel("layer")
            ax.set_yticks(range(len(r["layers"])))
            ax.set_yticklabels(r["layers"], fontsize=6)
        fig.colorbar(im, ax=list(axes[0]), label="first-token attention A0")
        paths["heatmap"] = out / "first_token_attention_heatmap.png"
        fig.savefig(paths["heatmap"], dpi=110)
        plt.close(fig)

    # 3. value-drain ratio per layer (gated solid, ungated dashed)
    if any((r.get("value_drain") or {}).get("gated") for r in reports.values()):
        fig, ax = plt.subplots(figsize=(7, 3.5))
        for i, (lab, r) in enumerate(reports.items()):
            vd = r.get("value_drain") or {}
            if not vd.get("gated"):
                continue
            c = COLORS[i % len(COLORS)]
            ax.plot(r["layers"], _row_means(vd["gated"]), "o-", color=c, label=f"{lab}: after gate")
            if r["model"].get("patched"):
                ax.plot(r["layers"], _row_means(vd["ungated"]), "x--", color=c, alpha=0.7, label=f"{lab}: before gate")
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_yscale("log")
        paths["value_drain"] = _finish(plt, fig, ax, out / "value_drain.png", "layer", "|v_0| / mean |v_j>=1|",
                                 "Value-drain ratio per layer (mean over kv heads; < 1: drained first token)")

    # 4. gate distribution (first token vs others), patched models only
    gated = [(lab, r) for lab, r in reports.items() if r.get("gates")]
    if gated:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        for i, (lab, r) in enumerate(gated):
            h = r["gates"]["histogram"]
            edges = h["edges"]
            centers = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
            c = COLORS[labels.index(lab) % len(COLORS)]
            for key, style in (("rest", "-"), ("first", ":")):
                total = sum(h[key]) or 1.0
                ax.plot(centers, [v / total for v in h[key]], style, color=c, label=f"{lab}: {'position 0' if key == 'first' else 'other positions'}")
        paths["gates"] = _finish(plt, fig, ax, out / "gate_distribution.png", "gate value g", "fraction",
                                 "Gate distribution (all layers and kv heads)")
    return paths
