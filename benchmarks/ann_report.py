"""ann_methods' outputs: a Markdown table, the rows as JSON, and a recall-vs-queries/s chart.

    python -m benchmarks.ann_report docs/benchmarks/index-2026-11-22-1m-prefault.json   # redraw a chart
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path


def write_report(rows: list[dict], out: Path, stem: str, command: str, cores: int) -> None:
    """Write `stem`.json, `stem`.md and `stem`.png under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    today = date.today().isoformat()
    (out / f"{stem}.json").write_text(json.dumps({"command": command, "date": today, "cores": cores, "rows": rows},
                                                 indent=1))
    header = ("| dataset | method | params | recall@10 | q/s | p50 ms | p99 ms | build s | size MB | build peak MB "
              "| serving MB |")
    lines = [f"# Index benchmark, {today}", "", f"`{command}` on {cores} cores; queries on one thread, builds on "
             "all cores. Serving MB: resident memory that a fresh process adds by loading the saved index and "
             "answering 300 of the queries (at the largest search_k or ef of its build).", "",
             header, "|" + "---|" * 11]
    lines += [f"| {r['dataset']} | {r['method']} | {r['params']} | {r['recall_at_10']} | {r['qps']} | {r['p50_ms']} | "
              f"{r['p99_ms']} | {r['build_s']} | {r['size_mb']} | {r['build_peak_mb']} | {r['serve_mb']} |"
              for r in rows]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    chart(rows, out / f"{stem}.png")


def chart(rows: list[dict], path: Path) -> None:
    """Recall@10 against queries/s, one panel per dataset, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["dataset"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.5), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        for method in dict.fromkeys(r["method"] for r in rows if r["dataset"] == name):
            pts = sorted((r["recall_at_10"], r["qps"]) for r in rows if r["dataset"] == name and r["method"] == method)
            frontier = [p for p in pts if not any(o[0] >= p[0] and o[1] > p[1] for o in pts)]  # best q/s per recall
            ax.plot([p[0] for p in frontier], [p[1] for p in frontier], "o-", label=method, markersize=3,
                    color=colours[method])
        ax.set_yscale("log")
        ax.set_xlabel("recall@10 vs exact")
        ax.set_ylabel("queries/s (1 thread)")
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def replot(json_file: Path) -> None:
    """Redraw the chart of an earlier run from its JSON."""
    chart(json.loads(json_file.read_text())["rows"], json_file.with_suffix(".png"))



if __name__ == "__main__":
    import sys

    for name in sys.argv[1:]:
        replot(Path(name))
