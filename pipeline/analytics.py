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
import logging
import sys
import time
from pathlib import Path

import pandas as pd

from pipeline.common import cli
from pipeline.common.errors import StageError, user_input
from pipeline.reporting import demand, experiments, joining, writing
from pipeline.reporting.tallies import Tallies
from runtime.events import PARTITION, QUERIES, list_files

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
    items = writing.index_items(index) if index is not None else None
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
        del queries, clicks, joined, matched  # before the next day is read: one day's events in memory, not two
    tables = tallies.tables()
    cut = tallies.score_quantile(LOW_SHARE) if low_score is None else low_score
    low = pd.concat(tallies.low) if tallies.low else pd.DataFrame(columns=["best", "vector", "top_hit", "clicked"])
    low = low[low["best"] < cut]
    groups, grouped_by = demand.group(low)
    arms, comparisons = experiments.ab_table(tables["clients"])
    zero_click = tables["filters"][tables["filters"]["clicked"] == 0].sort_values("searches", ascending=False)
    summary = _figures(tables, arms, comparisons, cut, len(low), grouped_by, tallies, days_read)
    summary["seconds"] = round(time.perf_counter() - started, 2)
    writing.write(out, tables, arms, comparisons, groups, grouped_by, zero_click, tallies, cut, summary, items)
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
    lines += [f"  {writing.verdict(c)}" for c in s["ab"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run the stage from the command line (`python -m pipeline.analytics --help`)."""
    cli.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    main()
