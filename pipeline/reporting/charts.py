"""The report's pictures: searches per day, click-through by rank, the best scores, and the A/B arms."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)


def searches_per_day(kinds: pd.DataFrame, per_day: pd.DataFrame, path: Path) -> None:
    """Stacked bars of searches per day by kind, with the share that got a click on the right axis."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 0.25 * len(kinds) + 4), 3.6))
    x = np.arange(len(kinds))
    bottom = np.zeros(len(kinds))
    order = ("upload", "url", "crop", "similar")
    for kind in sorted(kinds.columns, key=lambda k: order.index(k) if k in order else len(order)):
        ax.bar(x, kinds[kind].to_numpy(), bottom=bottom, label=kind)
        bottom += kinds[kind].to_numpy()
    ax.set_ylabel("searches")
    step = max(1, len(kinds) // 15)
    ax.set_xticks(x[::step], [str(day)[5:] for day in kinds.index[::step]], rotation=60, fontsize=8)
    ax.legend(loc="upper left", fontsize=8)
    share = ax.twinx()
    share.plot(x, 100 * per_day["click_share"].to_numpy(), "k.-", label="with a click")
    share.set_ylabel("% with a click")
    share.set_ylim(0, 100)
    ax.set_title("Searches per day, and the share with a click")
    _save(fig, path)


def ctr_by_rank(by_rank: pd.DataFrame, path: Path, ranks: int = 20) -> None:
    """Bars of click-through at each rank (clicks on that rank over queries that showed it)."""
    plt = _pyplot()
    shown = by_rank.head(ranks)
    fig, ax = plt.subplots(figsize=(6, 3.4))
    ax.bar(shown["rank"], 100 * shown["ctr"], color="#3a6bc4")
    ax.set_xlabel("rank of the result")
    ax.set_ylabel("% of searches clicking it")
    ax.set_xticks(shown["rank"])
    ax.set_title("Click-through by rank")
    _save(fig, path)


def best_scores(counts: np.ndarray, bins: np.ndarray, low: float, path: Path) -> None:
    """A histogram of each search's best score, with the line under which a search counts as missed demand."""
    plt = _pyplot()
    used = np.flatnonzero(counts)
    fig, ax = plt.subplots(figsize=(6, 3.4))
    if len(used):
        lo, hi = used[0], used[-1] + 1
        width = max(1, (hi - lo) // 50)  # about 50 bars, whatever the spread
        edges = bins[lo:hi + 1:width]
        sums = np.add.reduceat(counts[lo:hi], np.arange(0, hi - lo, width))
        ax.bar(edges[:len(sums)], sums, width=(bins[1] - bins[0]) * width, align="edge", color="#888")
        ax.axvline(low, color="#c33", label=f"low: best score < {low:.3f}")
        ax.legend(fontsize=8)
    ax.set_xlabel("best score of the search")
    ax.set_ylabel("searches")
    ax.set_title("How close the catalog came")
    _save(fig, path)


def ab_arms(arms: pd.DataFrame, path: Path) -> None:
    """Click-through and MRR per arm, each with its 95% interval."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(7, 3.2))
    for ax, (metric, title) in zip(axes, (("ctr", "click-through"), ("mrr", "mean reciprocal rank")), strict=True):
        ax.bar(arms["arm"], arms[metric], yerr=arms[f"{metric}_ci"], capsize=6, color=["#888", "#3a6bc4"][:len(arms)])
        ax.set_title(title)
        ax.set_ylim(0, max(0.05, float((arms[metric] + arms[f"{metric}_ci"].fillna(0)).max()) * 1.25))
    fig.suptitle("A/B arms (95% intervals)")
    _save(fig, path)
