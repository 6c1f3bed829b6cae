"""Small matplotlib plots rendered to inline SVG strings for report.html (Agg backend, no display).

Text stays text in the SVG (``svg.fonttype = none``): the page is smaller and labels stay selectable.
"""

from __future__ import annotations

import io

import numpy as np

COLORS = {"baseline": "#9aa5b1", "model": "#1a73e8"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "none", "font.size": 9, "axes.spines.top": False,
                         "axes.spines.right": False})
    return plt


def _svg(fig) -> str:
    plt = _pyplot()
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and DOCTYPE: not allowed inside HTML


def bar_chart(categories: list[str], series: dict[str, list[float]], ylabel: str, ylim=None,
              rotate: bool = False) -> str:
    """Grouped bars: one group per category, one bar per series (e.g. baseline and model)."""
    plt = _pyplot()
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.55 * len(categories) * len(series) + 1.5), 3.0))
    x = np.arange(len(categories))
    for k, (name, values) in enumerate(series.items()):
        bars = ax.bar(x + (k - (len(series) - 1) / 2) * width, values, width, label=name,
                      color=COLORS.get(name, None))
        if len(categories) <= 12:
            ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    ax.set_xticks(x, [shorten(c) for c in categories], rotation=60 if rotate else 0, ha="right" if rotate else "center")
    ax.set_ylabel(ylabel)
    if ylim:
        ax.set_ylim(*ylim)
    if len(series) > 1:
        ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _svg(fig)


def shorten(label: str, width: int = 32) -> str:
    """Cut in the middle: Banking77-style labels share long prefixes and differ at the end."""
    if len(label) <= width:
        return label
    keep = (width - 1) // 2
    return label[:keep] + "\u2026" + label[-(width - 1 - keep):]


def heatmap(matrix: np.ndarray, labels: list[str], annotate: bool = False) -> str:
    """Counts as a heatmap (rows true, columns predicted)."""
    plt = _pyplot()
    n = len(labels)
    size = min(9.0, max(3.5, 0.32 * n + 2.5))
    fig, ax = plt.subplots(figsize=(size, size))
    image = ax.imshow(matrix, cmap="Blues", aspect="equal")
    short = [shorten(label) for label in labels]
    ax.set_xticks(range(n), short, rotation=90, fontsize=7)
    ax.set_yticks(range(n), short, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if annotate:
        top = matrix.max() or 1
        for i in range(n):
            for j in range(n):
                if matrix[i, j]:
                    ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if matrix[i, j] > top / 2 else "black")
    fig.colorbar(image, ax=ax, shrink=0.6)
    return _svg(fig)


def histogram(series: dict[str, list[float]], xlabel: str) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 2.8))
    everything = np.concatenate([np.asarray(v, float) for v in series.values()])
    bins = np.histogram_bin_edges(everything, bins=30) if everything.size else 10
    for name, values in series.items():
        ax.hist(values, bins=bins, alpha=0.6, label=name, color=COLORS.get(name, None))
        for q, style in ((50, "-"), (95, "--")):
            if len(values):
                ax.axvline(np.percentile(values, q), color=COLORS.get(name, "black"), linestyle=style, linewidth=1)
    ax.set_xlabel(xlabel + "  (solid line p50, dashed p95)")
    ax.set_ylabel("samples")
    ax.legend(frameon=False)
    return _svg(fig)
