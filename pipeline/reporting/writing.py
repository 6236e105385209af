"""The analytics report as files: `report.md` with its tables and charts, `report.json`, one CSV per table, and
the picture of the missed demand drawn from an index's thumbnails."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.common.errors import user_input
from pipeline.common.plots import contact_sheet
from pipeline.reporting import charts
from pipeline.reporting.tallies import SCORE_BINS, Tallies
from runtime import artifacts
from runtime.items import read_items
from runtime.layout import ITEMS_FILE


def _markdown(frame: pd.DataFrame, floats: str = "{:.4f}") -> str:
    if frame.empty:
        return "(none)\n"
    shown = frame.copy()
    for column in shown.columns:
        if shown[column].dtype.kind == "f":
            shown[column] = shown[column].map(lambda v: "" if pd.isna(v) else floats.format(v))
    lines = ["| " + " | ".join(map(str, shown.columns)) + " |", "|" + " --- |" * len(shown.columns)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in shown.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def verdict(c: dict) -> str:
    """One line on an A/B comparison: which arm is better, by how much, and whether that is significant."""
    if not math.isfinite(c["p_value"]):
        return f"{c['metric']}: too few clients in an arm to compare"
    better = c["treatment"] if c["difference"] > 0 else c["control"]
    if c["significant"]:
        return (f"{c['metric']}: {better} is better by {abs(c['difference']):.4f} ({100 * c['lift']:+.1f}% for "
                f"{c['treatment']}), 95% interval [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}], p = {c['p_value']:.2g}: "
                "significant at 5%")
    return (f"{c['metric']}: difference {c['difference']:+.4f}, 95% interval [{c['ci_low']:+.4f}, "
            f"{c['ci_high']:+.4f}], p = {c['p_value']:.2g}: not significant at 5%; keep the test running")


def write(out: Path, tables: dict, arms: pd.DataFrame, comparisons: list[dict], groups: pd.DataFrame,
           grouped_by: str, zero_click: pd.DataFrame, tallies: Tallies, cut: float, summary: dict,
           items: tuple[Path, dict[str, dict]] | None) -> None:
    """Write every file of the report to `out`; `items` (`index_items`, optional) pictures the missed demand."""
    out.mkdir(parents=True, exist_ok=True)
    per_day = tables["per_day"].drop(columns=["rr_sum"])
    kinds = tables["kinds"]
    charts.searches_per_day(kinds, tables["per_day"], out / "searches.png")
    charts.ctr_by_rank(tables["by_rank"], out / "ctr_by_rank.png")
    charts.best_scores(tallies.scores, SCORE_BINS, cut, out / "best_scores.png")
    if len(arms):
        charts.ab_arms(arms, out / "ab.png")
    if items is not None:
        folder, by_id = items
        contact_sheet([(f"group {g.group}: {g.queries} searches, best score {g.best_median:.3f}, "
                        f"{100 * g.click_share:.0f}% clicked",
                        [(str(folder / by_id[pid]["thumbnail"]), f"{by_id[pid]['name'][:18]} x{count}")
                         for pid, count in g.top_hits if pid in by_id])
                       for g in groups.itertuples()], out / "missed_demand.png", min_columns=4)
    names = items[1] if items is not None else {}
    groups = groups.assign(top_hits=["; ".join(f"{names[pid]['name']} ({pid}) x{count}" if pid in names
                                               else f"{pid} x{count}" for pid, count in hits)
                                     for hits in groups["top_hits"]])
    per_day.to_csv(out / "per_day.csv", index=False)
    kinds.to_csv(out / "kinds.csv", index_label="day")
    tables["by_rank"].to_csv(out / "ctr_by_rank.csv", index=False)
    groups.to_csv(out / "missed_demand.csv", index=False)
    zero_click.to_csv(out / "zero_click_filters.csv", index=False)
    arms.to_csv(out / "ab.csv", index=False)
    (out / "report.json").write_text(json.dumps(summary, indent=2, default=_plain) + "\n")
    s = summary
    text = [f"# Search analytics, {s['first_day']} to {s['last_day']} ({s['days']} days)\n",
            f"{s['searches']:,} searches by {s['clients']:,} clients; {100 * s['click_share']:.1f}% had a click; "
            f"mean reciprocal rank of clicks {s['mrr']:.4f}; {s['clicks']:,} clicks "
            f"({s['unmatched_clicks']:,} repeated, or on a rank the search did not show).\n",
            "## Searches per day\n", "![searches](searches.png)\n", _markdown(per_day),
            "\n### By kind\n", _markdown(kinds.reset_index(names="day")),
            "\n## Click-through by rank\n", "![ctr by rank](ctr_by_rank.png)\n", _markdown(tables["by_rank"].head(20)),
            "\n## Missed demand\n", f"Searches whose best score was under {cut:.3f} "
            f"({s['low_searches']:,}), grouped by {grouped_by}: what shoppers look for that the catalog lacks.\n",
            "![best scores](best_scores.png)\n"]
    if items is not None:
        text.append("![missed demand](missed_demand.png)\n")
    text += [_markdown(groups, "{:.3f}"), "\n## Filters with no click\n", _markdown(zero_click.head(30)),
             "\n## A/B test\n"]
    if len(arms):
        text += ["![a/b](ab.png)\n", _markdown(arms)]
        text += [f"- {verdict(c)}\n" for c in comparisons] or ["One arm only: no comparison.\n"]
    (out / "report.md").write_text("\n".join(text))


def index_items(index: Path) -> tuple[Path, dict[str, dict]]:
    """An index version's folder and its products by id (for their names and thumbnails).

    Raises:
        StageError: not an index folder, or one that fails verification.
    """
    with user_input(artifacts.ArtifactError):
        folder = artifacts.resolve_index(index)
        folder, _ = artifacts.base_of(folder, artifacts.verify(folder, check_hashes=False), check_hashes=False)
    return folder, {str(item["product_id"]): item for item in read_items(folder / ITEMS_FILE)}


def _plain(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    return str(value)
