"""What the report keeps of each day once its queries are joined to their clicks: counts, not events.

Memory is bounded by the catalog's demand, not by the days read: per day a row of counts; per rank two counters;
a histogram of the best scores of unfiltered photo searches; per client and arm three sums (the A/B unit); per
filter value two counts; and the lowest-scored fifth of each day's unfiltered photo searches, the candidates for
missed demand.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

MAX_RANK = 100
SCORE_BINS = np.linspace(-1.0, 1.0, 2001)  # a best score's histogram, 0.001 wide: its quantiles to that
LOW_KEEP = 0.2  # of each day's queries, the lowest-scored share kept as candidates for the missing demand


@dataclass
class Tallies:
    """Counts added one day at a time (`add`) and turned into the report's tables (`tables`)."""

    days: list[dict] = field(default_factory=list)
    kinds: list[pd.Series] = field(default_factory=list)
    rank_shown: np.ndarray = field(default_factory=lambda: np.zeros(MAX_RANK + 1, np.int64))
    rank_clicked: np.ndarray = field(default_factory=lambda: np.zeros(MAX_RANK + 1, np.int64))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(len(SCORE_BINS) - 1, np.int64))
    clients: list[pd.DataFrame] = field(default_factory=list)
    filters: list[pd.DataFrame] = field(default_factory=list)
    low: list[pd.DataFrame] = field(default_factory=list)
    clicks: int = 0
    unmatched_clicks: int = 0

    def add(self, day: str, joined: pd.DataFrame, matched: pd.DataFrame, clicks: int) -> None:
        """Count one day: its queries joined to their clicks, the clicks that matched, and how many clicks there
        were on its queries' results (matched or not)."""
        first = joined["first_click"].to_numpy(np.int64)
        reciprocal = np.where(first > 0, 1.0 / np.maximum(first, 1), 0.0)
        joined = joined.assign(rr=reciprocal)
        self.days.append({"day": day, "searches": len(joined), "with_click": int(joined["clicked"].sum()),
                          "rr_sum": float(reciprocal.sum()), "clients": int(joined["client_id"].nunique())})
        self.kinds.append(joined["kind"].value_counts().rename(day))
        shown = joined["shown"].to_numpy(np.int64).clip(0, MAX_RANK)
        self.rank_shown += np.bincount(shown, minlength=MAX_RANK + 1)[::-1].cumsum()[::-1]
        ranks = matched["ordinal"].to_numpy(np.int64).clip(0, MAX_RANK)
        self.rank_clicked += np.bincount(ranks, minlength=MAX_RANK + 1)
        # Missed demand is what a photo found with nothing narrowing it: "more like this" asks for a catalog product,
        # and a filter may exclude what was photographed (its low score is the filter's, not the catalog's)
        photos = joined[(joined["kind"] != "similar") & (joined["filters"].map(len) == 0)]
        best = photos["best"].to_numpy(np.float64)
        best = best[np.isfinite(best)]
        self.scores += np.histogram(best, SCORE_BINS)[0]
        self.clicks += clicks
        self.unmatched_clicks += clicks - len(matched)
        named = joined[joined["client_id"].notna()]
        self.clients.append(named.groupby(["arm", "client_id"]).agg(
            queries=("query_id", "size"), clicked=("clicked", "sum"), rr=("rr", "sum")).reset_index())
        used = joined[["filters", "clicked"]].explode("filters").dropna(subset=["filters"])
        if len(used):
            self.filters.append(used.groupby("filters").agg(searches=("clicked", "size"),
                                                             clicked=("clicked", "sum")).reset_index())
        if len(best):
            cut = np.nanquantile(photos["best"].to_numpy(np.float64), LOW_KEEP)
            self.low.append(photos.loc[photos["best"] <= cut, ["day", "kind", "arm", "best", "top_hit", "clicked",
                                                               "vector", "index_version"]])

    def tables(self) -> dict[str, pd.DataFrame]:
        """The per-day table, searches per day and kind, click-through by rank, per-client sums, filter values."""
        per_day = pd.DataFrame(self.days, columns=["day", "searches", "with_click", "rr_sum", "clients"])
        per_day["click_share"] = per_day["with_click"] / per_day["searches"].where(per_day["searches"] > 0)
        per_day["mrr"] = per_day["rr_sum"] / per_day["searches"].where(per_day["searches"] > 0)
        kinds = pd.concat(self.kinds, axis=1).T.fillna(0).astype(int) if self.kinds else pd.DataFrame()
        ranks = np.arange(1, MAX_RANK + 1)
        by_rank = pd.DataFrame({"rank": ranks, "shown": self.rank_shown[1:], "clicked": self.rank_clicked[1:]})
        by_rank = by_rank[by_rank["shown"] > 0].copy()
        by_rank["ctr"] = by_rank["clicked"] / by_rank["shown"]
        clients = (pd.concat(self.clients).groupby(["arm", "client_id"]).sum().reset_index() if self.clients
                   else pd.DataFrame(columns=["arm", "client_id", "queries", "clicked", "rr"]))
        filters = (pd.concat(self.filters).groupby("filters").sum().reset_index() if self.filters
                   else pd.DataFrame(columns=["filters", "searches", "clicked"]))
        filters = filters.rename(columns={"filters": "filter"})
        return {"per_day": per_day, "kinds": kinds, "by_rank": by_rank, "clients": clients, "filters": filters}

    def score_quantile(self, share: float) -> float:
        """The best score below which `share` of all queries fall (to the histogram's 0.001)."""
        total = self.scores.sum()
        if total == 0:
            return float("nan")
        position = int(np.searchsorted(self.scores.cumsum(), share * total))
        return float(SCORE_BINS[min(position + 1, len(SCORE_BINS) - 1)])
