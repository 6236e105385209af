"""A/B comparisons of click-through and mean reciprocal rank, with the client as the unit.

A client's queries are not independent (one shopper clicks more than another), so each metric is a ratio of
per-client sums (clicked queries over queries), and its variance comes from the delta method over clients (Deng,
Knoblich and Lu, "Applying the Delta Method in Metric Analytics", KDD 2018). The difference of two arms is
compared with a two-sided z-test.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import pandas as pd

Z95 = 1.959963984540054  # two-sided 95%
ALPHA = 0.05


class Ratio(NamedTuple):
    """A ratio metric of one arm: its value, the variance of that value, and how many clients and queries."""

    value: float
    variance: float
    clients: int
    queries: int


def ratio(numerator: np.ndarray, denominator: np.ndarray) -> Ratio:
    """Σ numerator / Σ denominator over clients, with its delta-method variance."""
    clients = len(denominator)
    if clients == 0 or denominator.sum() == 0:
        return Ratio(float("nan"), float("nan"), clients, int(denominator.sum()))
    value = numerator.sum() / denominator.sum()
    if clients < 2:
        return Ratio(float(value), float("nan"), clients, int(denominator.sum()))
    residual = numerator - value * denominator
    variance = residual.var(ddof=1) / (clients * denominator.mean() ** 2)
    return Ratio(float(value), float(variance), clients, int(denominator.sum()))


def compare(control: Ratio, treatment: Ratio) -> dict:
    """Treatment minus control: the difference, its 95% interval, the relative lift, z, p and whether p < ALPHA."""
    difference = treatment.value - control.value
    se = math.sqrt(control.variance + treatment.variance)
    if not math.isfinite(se) or se == 0:
        return {"difference": difference, "ci_low": float("nan"), "ci_high": float("nan"),
                "lift": difference / control.value if control.value else float("nan"), "z": float("nan"),
                "p_value": float("nan"), "significant": False}
    z = difference / se
    p = math.erfc(abs(z) / math.sqrt(2))
    return {"difference": difference, "ci_low": difference - Z95 * se, "ci_high": difference + Z95 * se,
            "lift": difference / control.value if control.value else float("nan"), "z": z, "p_value": p,
            "significant": p < ALPHA}


def ab_table(clients: pd.DataFrame) -> tuple[pd.DataFrame, list[dict]]:
    """Per arm: clients, queries, click-through (share of queries with a click) and MRR, each with its 95%
    interval; and, when there are two arms, B against A for both metrics.

    Args:
        clients: per (arm, client_id): queries, clicked (queries with a click), rr (sum of reciprocal ranks).
    """
    rows, ratios = [], {}
    for arm, group in clients.groupby("arm"):
        queries = group["queries"].to_numpy(float)
        for metric, column in (("ctr", "clicked"), ("mrr", "rr")):
            ratios[arm, metric] = ratio(group[column].to_numpy(float), queries)
        ctr, mrr = ratios[arm, "ctr"], ratios[arm, "mrr"]
        rows.append({"arm": arm, "clients": ctr.clients, "queries": ctr.queries,
                     "ctr": ctr.value, "ctr_ci": Z95 * math.sqrt(ctr.variance) if ctr.variance >= 0 else float("nan"),
                     "mrr": mrr.value, "mrr_ci": Z95 * math.sqrt(mrr.variance) if mrr.variance >= 0 else float("nan")})
    arms = sorted({arm for arm, _ in ratios})
    comparisons = [{"metric": metric, "control": arms[0], "treatment": arms[1],
                    **compare(ratios[arms[0], metric], ratios[arms[1], metric])}
                   for metric in ("ctr", "mrr")] if len(arms) == 2 else []
    return pd.DataFrame(rows, columns=["arm", "clients", "queries", "ctr", "ctr_ci", "mrr", "mrr_ci"]), comparisons
