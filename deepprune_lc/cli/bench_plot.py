"""The Pareto plot of a bench report: tokens vs accuracy and latency vs accuracy.

One point per row at its mean over resamples, with error bars of one standard deviation on both
axes; up and to the left is better. Needs matplotlib (the ``[plot]`` extra).
"""

from __future__ import annotations

import os

from deepprune_lc.cli.bench_report import BenchReport

__all__ = ["write_pareto_plot"]

_FAMILY_MARKERS = {
    "self-consistency": "s",
    "ESC": "^",
    "Adaptive-Consistency": "v",
    "DeepPrune": "o",
    "random": "x",
    "shortest": "*",
}


def _marker(method: str) -> str:
    return next((m for prefix, m in _FAMILY_MARKERS.items() if method.startswith(prefix)), "D")


def write_pareto_plot(report: BenchReport, path: str | os.PathLike[str]) -> None:
    """Write the two-panel PNG to ``path``; raises ``ImportError`` naming the extra without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("--plot needs matplotlib: pip install 'deepprune-lc[plot]'") from error

    figure, axes = plt.subplots(1, 2, figsize=(15, 7), sharey=True)
    panels = (("tokens", "total tokens"), ("latency_tokens", "latency tokens (mean per problem)"))
    cmap = plt.get_cmap("tab20")
    for axis, (metric, label) in zip(axes, panels, strict=True):
        for i, row in enumerate(report.rows):
            x, y = row.spread(metric), row.spread("accuracy")
            axis.errorbar(
                x.mean,
                y.mean * 100,
                xerr=x.std,
                yerr=y.std * 100,
                fmt=_marker(row.method),
                color=cmap(i % 20),
                capsize=3,
                label=f"{row.method}" + (f" ({row.settings})" if row.settings else ""),
            )
        axis.set_xlabel(label)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (%)")
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=2, fontsize=7, frameon=False)
    s = report.settings
    figure.suptitle(
        f"{os.path.basename(report.pool)}: N = {s.n_traces}, {s.resamples} resamples (mean ± std)",
        fontsize=10,
    )
    rows = (len(report.rows) + 1) // 2
    figure.tight_layout(rect=(0, min(0.45, 0.02 + 0.022 * rows), 1, 0.95))
    figure.savefig(path, dpi=120)
    plt.close(figure)
