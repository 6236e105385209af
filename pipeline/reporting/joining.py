"""Query and click events of one day as tables, and each query joined to the clicks on its results.

A click is matched to its query by `query_id`, among the clicks of the query's own day and of the day after (a
shopper who searched at 23:59 clicks after midnight), so two days of queries are the most held in memory.
"""

from __future__ import annotations

import pandas as pd

from runtime import events

QUERY_COLUMNS = ["query_id", "day", "kind", "arm", "client_id", "shown", "best", "top_hit", "filters", "vector",
                 "index_version"]
CLICK_COLUMNS = ["query_id", "ordinal", "action", "object_id"]


def read_queries(location: str, day: str) -> pd.DataFrame:
    """One row per query event of `day`: its kind, arm, client, results shown, best score, top product, the
    filters it used (as `column=value` strings) and its vector (base64 float16, or None)."""
    rows = []
    for record in events.read_records(location, events.QUERIES, {day}):
        attributes = record.get("query_attributes") or {}
        scores = attributes.get("scores") or []
        hits = record.get("query_response_hit_ids") or []
        filters = attributes.get("filters") or {}
        rows.append((record.get("query_id"), day, attributes.get("kind", "upload"), attributes.get("arm") or "A",
                     record.get("client_id"), len(hits), float(scores[0]) if scores else float("nan"),
                     str(hits[0]) if hits else None,
                     [f"{column}={value}" for column, values in filters.items()
                      for value in (values if isinstance(values, list) else [values])],
                     attributes.get("vector_f16"), attributes.get("index_version")))
    frame = pd.DataFrame(rows, columns=QUERY_COLUMNS)
    return frame.drop_duplicates("query_id")


def read_clicks(location: str, day: str) -> pd.DataFrame:
    """One row per event of `day` on a result (every action in `runtime.events.ACTIONS` is engagement)."""
    rows = []
    for record in events.read_records(location, events.EVENTS, {day}):
        attributes = record.get("event_attributes") or {}
        position = attributes.get("position") or {}
        target = attributes.get("object") or {}
        if record.get("action_name") in events.ACTIONS and isinstance(position.get("ordinal"), int):
            rows.append((record.get("query_id"), position["ordinal"], record["action_name"], target.get("object_id")))
    return pd.DataFrame(rows, columns=CLICK_COLUMNS)


def join(queries: pd.DataFrame, clicks: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Add to each query its first clicked rank (0: none) and whether it had a click; return the queries and the
    distinct (query, rank) clicks that matched one of them within its results."""
    matched = clicks.merge(queries[["query_id", "shown"]], on="query_id", how="inner")
    matched = matched[(matched["ordinal"] >= 1) & (matched["ordinal"] <= matched["shown"])]
    matched = matched.drop_duplicates(["query_id", "ordinal"])
    first = matched.groupby("query_id")["ordinal"].min().rename("first_click")
    joined = queries.merge(first, left_on="query_id", right_index=True, how="left")
    joined["first_click"] = joined["first_click"].fillna(0).astype(int)
    joined["clicked"] = joined["first_click"] > 0
    return joined, matched
