"""Report what shoppers searched and clicked: searches per day and kind, click-through, MRR, missed demand, A/B arms.

`python -m pipeline analytics --events DIR|s3://bucket/prefix --out FOLDER [--days 30]` reads the service's query
and click events (UBI records, `runtime.events`) of the last `--days` days (1 to 90) and writes `FOLDER/report.md`
(the tables), `report.json` (every figure), CSVs and PNG charts. Days are read one at a time and only counts are
kept between them, so its time grows with the events read and its memory with one day's events (docs/analytics.md
for the figures at a million events a day).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.common import cli
from pipeline.common.errors import StageError, user_input
from pipeline.common.plots import contact_sheet
from pipeline.reporting import charts, demand, experiments, joining
from pipeline.reporting.tallies import SCORE_BINS, Tallies
from runtime import artifacts
from runtime.events import PARTITION, QUERIES, list_files
from runtime.items import read_items
from runtime.layout import ITEMS_FILE

log = logging.getLogger(__name__)

MAX_DAYS = 90
LOW_SHARE = 0.1  # without --low-score, the lowest-scored tenth of searches is the missed demand
PICTURES = ("searches.png", "ctr_by_rank.png", "best_scores.png", "ab.png", "missed_demand.png")


def window(location: str, days: int, until: str | None) -> list[str]:
    """The UTC days to read: `days` days ending at `until` (default: the newest day with query events)."""
    if not 1 <= days <= MAX_DAYS:
        raise StageError(f"--days must be from 1 to {MAX_DAYS}, got {days}")
    found = sorted({PARTITION.search(name).group(1) for name in list_files(location, QUERIES)})
    if not found:
        raise StageError(f"no query events under {location} (expected {QUERIES}/dt=YYYY-MM-DD/*.jsonl): "
                         "is EVENTS_DIR set on the service, and EVENTS_TARGET where you look?")
    with user_input(ValueError):
        last = dt.date.fromisoformat(until or found[-1])
    first = max(last - dt.timedelta(days=days - 1), dt.date.fromisoformat(found[0]))  # no empty days before
    return [(first + dt.timedelta(days=n)).isoformat() for n in range((last - first).days + 1)]


def run(events: str, out: Path, days: int = 30, until: str | None = None, low_score: float | None = None,
        index: Path | None = None) -> dict:
    """Read `days` days of events and write the report.

    Args:
        events: the events root (a folder, or s3://bucket/prefix), as EVENTS_TARGET or EVENTS_DIR names.
        out: the folder the report is written to.
        days: how many UTC days, 1 to 90, ending at `until`.
        until: the last day (YYYY-MM-DD); default the newest day with query events.
        low_score: a best score under which a search is missed demand; default the lowest tenth of searches.
        index: an index folder whose thumbnails picture the missed demand's closest products (optional).

    Returns:
        A summary: days, searches, clicks, click share, MRR, the A/B comparison, seconds, the report's path.

    Raises:
        StageError: no events there, or --days out of range.
    """
    started = time.perf_counter()
    days_read = window(events, days, until)
    tallies = Tallies()
    clicks_of: dict[str, pd.DataFrame] = {}
    for day in days_read:
        following = (dt.date.fromisoformat(day) + dt.timedelta(days=1)).isoformat()
        for each in (day, following):
            if each not in clicks_of:
                clicks_of[each] = joining.read_clicks(events, each)
        clicks = pd.concat([clicks_of.pop(day), clicks_of[following]], ignore_index=True)
        queries = joining.read_queries(events, day)
        joined, matched = joining.join(queries, clicks)
        tallies.add(day, joined, matched, int(clicks["query_id"].isin(queries["query_id"]).sum()))
        log.info("%s: %d searches, %d with a click", day, len(joined), int(joined["clicked"].sum()))
    tables = tallies.tables()
    cut = tallies.score_quantile(LOW_SHARE) if low_score is None else low_score
    low = pd.concat(tallies.low) if tallies.low else pd.DataFrame(columns=["best", "vector", "top_hit", "clicked"])
    low = low[low["best"] < cut]
    groups, grouped_by = demand.group(low)
    arms, comparisons = experiments.ab_table(tables["clients"])
    zero_click = tables["filters"][tables["filters"]["clicked"] == 0].sort_values("searches", ascending=False)
    summary = _figures(tables, arms, comparisons, cut, len(low), grouped_by, tallies, days_read)
    summary["seconds"] = round(time.perf_counter() - started, 2)
    _write(out, tables, arms, comparisons, groups, grouped_by, zero_click, tallies, cut, summary, index)
    summary["report"] = str(out / "report.md")
    return summary


def _figures(tables: dict, arms: pd.DataFrame, comparisons: list[dict], cut: float, low: int, grouped_by: str,
             tallies: Tallies, days_read: list[str]) -> dict:
    per_day = tables["per_day"]
    searches = int(per_day["searches"].sum())
    return {"days": len(days_read), "first_day": days_read[0], "last_day": days_read[-1], "searches": searches,
            "clients": len(tables["clients"]["client_id"].unique()), "clicks": tallies.clicks,
            "unmatched_clicks": tallies.unmatched_clicks,
            "click_share": float(per_day["with_click"].sum() / searches) if searches else float("nan"),
            "mrr": float(per_day["rr_sum"].sum() / searches) if searches else float("nan"),
            "low_score": cut, "low_searches": low, "grouped_by": grouped_by,
            "arms": arms.to_dict("records"), "ab": comparisons}


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


def _verdict(c: dict) -> str:
    if not math.isfinite(c["p_value"]):
        return f"{c['metric']}: too few clients in an arm to compare"
    better = c["treatment"] if c["difference"] > 0 else c["control"]
    if c["significant"]:
        return (f"{c['metric']}: {better} is better by {abs(c['difference']):.4f} ({100 * c['lift']:+.1f}% for "
                f"{c['treatment']}), 95% interval [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}], p = {c['p_value']:.2g}: "
                "significant at 5%")
    return (f"{c['metric']}: difference {c['difference']:+.4f}, 95% interval [{c['ci_low']:+.4f}, "
            f"{c['ci_high']:+.4f}], p = {c['p_value']:.2g}: not significant at 5%; keep the test running")


def _write(out: Path, tables: dict, arms: pd.DataFrame, comparisons: list[dict], groups: pd.DataFrame,
           grouped_by: str, zero_click: pd.DataFrame, tallies: Tallies, cut: float, summary: dict,
           index: Path | None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    per_day = tables["per_day"].drop(columns=["rr_sum"])
    kinds = tables["kinds"]
    charts.searches_per_day(kinds, tables["per_day"], out / "searches.png")
    charts.ctr_by_rank(tables["by_rank"], out / "ctr_by_rank.png")
    charts.best_scores(tallies.scores, SCORE_BINS, cut, out / "best_scores.png")
    if len(arms):
        charts.ab_arms(arms, out / "ab.png")
    items = _items(index) if index is not None else None
    if items is not None:
        folder, by_id = items
        contact_sheet([(f"group {g.group}: {g.queries} searches, best score {g.best_median:.3f}, "
                        f"{100 * g.click_share:.0f}% clicked",
                        [(str(folder / by_id[pid]["thumbnail"]), f"{by_id[pid]['name'][:18]} x{count}")
                         for pid, count in g.top_hits if pid in by_id])
                       for g in groups.itertuples()], out / "missed_demand.png")
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
        text += [f"- {_verdict(c)}\n" for c in comparisons] or ["One arm only: no comparison.\n"]
    (out / "report.md").write_text("\n".join(text))


def _items(index: Path) -> tuple[Path, dict[str, dict]] | None:
    with user_input(artifacts.ArtifactError):
        folder = artifacts.resolve_index(index)
        folder, _ = artifacts.base_of(folder, artifacts.verify(folder, check_hashes=False), check_hashes=False)
    return folder, {str(item["product_id"]): item for item in read_items(folder / ITEMS_FILE)}


def _plain(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add this stage's options to a parser: one flag per keyword of `run`."""
    parser.add_argument("--events", required=True, metavar="DIR|s3://BUCKET/PREFIX",
                        help="where the service's events are (EVENTS_TARGET, or EVENTS_DIR without one)")
    parser.add_argument("--out", type=Path, required=True, help="the folder the report is written to")
    parser.add_argument("--days", type=int, default=30, help=f"UTC days to read, 1 to {MAX_DAYS} (default 30)")
    parser.add_argument("--until", default=None, metavar="YYYY-MM-DD",
                        help="the last day read (default: the newest day with events)")
    parser.add_argument("--low-score", type=float, default=None,
                        help="a best score under which a search is missed demand (default: the lowest tenth)")
    parser.add_argument("--index", type=Path, default=None,
                        help="an index folder (e.g. DATA/index/current) whose thumbnails picture the missed demand")


def describe(summary: dict, options: dict) -> str:
    """What the command line prints after a run."""
    s = summary
    lines = [f"analytics: {s['searches']} searches over {s['days']} days, {100 * s['click_share']:.1f}% with a click, "
             f"MRR {s['mrr']:.4f}, in {s['seconds']} s -> {s['report']}"]
    lines += [f"  {_verdict(c)}" for c in s["ab"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run the stage from the command line (`python -m pipeline.analytics --help`)."""
    cli.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    main()
