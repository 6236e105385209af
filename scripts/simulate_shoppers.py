"""Play a day of shoppers against a running service through the page's own API calls, with a known click model.

Each shopper keeps a client id (as the page does in localStorage) and searches with catalog photos, now and then
with a photo of something the catalog lacks, now and then narrowed by a facet. On each answer the shopper scans
the results top down and acts on one (a "more like this", which the page reports to /api/events and follows with
/api/products/<id>/similar) with a probability that falls with the rank, is higher for a result of the category
it wants, and is `lift` times higher when `prefer` (an index version) answered. Every shopper draws from its own
seeded generator, so a day is the same whatever the threads' order.

It also adds up, per index version, the click probability each answer had (1 - prod(1 - p_rank)): the
click-through the model implies, which the analytics report's estimate should bracket.

    python -m scripts.simulate_shoppers --base http://127.0.0.1:8000 --catalog DATA/catalog --shoppers 300 \
        --prefer VERSION --lift 1.5 --out day.json
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

log = logging.getLogger(__name__)

BASE_CLICK = 0.12  # the chance of acting on a wanted product at rank 1 (some 40% of answers get a click)
OTHER_CATEGORY = 0.15  # relative chance for a result of another category
RANK_DECAY = 0.35  # bias(rank) = 1 / (1 + RANK_DECAY * (rank - 1))
ODD_SHARE = 0.1  # searches with a photo of something the catalog lacks
FILTER_SHARE = 0.1  # searches narrowed by a facet value
FOLLOW_SHARE = 0.5  # after a "more like this", the chance the shopper acts on that answer too
TIMEOUT_S = 30


def odd_photos(count: int = 3, size: int = 240) -> list[bytes]:
    """Photos of things no catalog of products holds: stripes, a chessboard, rings."""
    photos = []
    for pattern in range(count):
        image = Image.new("RGB", (size, size), (250, 250, 250))
        draw = ImageDraw.Draw(image)
        for i in range(0, size, 24):
            if pattern == 0:
                draw.rectangle([i, 0, i + 11, size], fill=(20, 160, 60))
            elif pattern == 1:
                for j in range(0, size, 24):
                    if (i + j) // 24 % 2:
                        draw.rectangle([i, j, i + 23, j + 23], fill=(200, 30, 30))
            else:
                draw.ellipse([i // 2, i // 2, size - i // 2, size - i // 2], outline=(30, 30, 200), width=5)
        out = io.BytesIO()
        image.save(out, "JPEG", quality=90)
        photos.append(out.getvalue())
    return photos


def catalog_photos(catalog: Path, limit: int = 400) -> list[tuple[bytes, str]]:
    """Photos of the acquired catalog (`DATA/catalog`, its catalog.csv) with their category, at most `limit`."""
    with open(catalog / "catalog.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))[:limit]
    return [((catalog / row["image"]).read_bytes(), row["category"]) for row in rows]


def click_chance(rank: int, relevant: bool, lifted: bool, lift: float) -> float:
    """The model's chance of acting on the result at `rank` (from 1)."""
    chance = BASE_CLICK / (1 + RANK_DECAY * (rank - 1)) * (1.0 if relevant else OTHER_CATEGORY)
    return min(1.0, chance * (lift if lifted else 1.0))


class Day:
    """One simulated day against `base`; `run()` plays it and returns its tallies."""

    def __init__(self, base: str, photos: list[tuple[bytes, str]], shoppers: int, searches: int, prefer: str | None,
                 lift: float, seed: int, facets: dict[str, list[str]] | None = None) -> None:
        self.base, self.photos, self.shoppers, self.searches = base.rstrip("/"), photos, shoppers, searches
        self.prefer, self.lift, self.seed = prefer, lift, seed
        self.odd = odd_photos()
        self.facets = facets if facets is not None else self._facets()

    def _call(self, path: str, client: str, body: bytes | None = None, content_type: str | None = None) -> dict:
        headers = {"X-Client-Id": client}
        if content_type:
            headers["Content-Type"] = content_type
        request = urllib.request.Request(self.base + path, data=body, headers=headers)
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return json.loads(response.read())

    def _facets(self) -> dict[str, list[str]]:
        facets = self._call("/api/filters", "simulator")["facets"]
        return {column: [v["value"] for v in values] for column, values in facets.items() if values}

    def _report(self, client: str, query_id: str, product_id: str, rank: int) -> None:
        event = {"action_name": "more_like_this", "query_id": query_id, "client_id": client,
                 "event_attributes": {"object": {"object_id": product_id}, "position": {"ordinal": rank}}}
        self._call("/api/events", client, json.dumps(event).encode(), "application/json")

    def _act(self, client: str, rng: np.random.Generator, answer: dict, wanted: str, tally: dict) -> dict | None:
        """Scan an answer as the model says; report the result acted on (if any) and return it."""
        lifted = self.prefer is not None and answer["version"] == self.prefer
        chances = [click_chance(r["rank"], r["category"] == wanted, lifted, self.lift) for r in answer["results"]]
        arm = tally[answer["version"]]
        arm["queries"] += 1
        arm["expected_clicked"] += 1.0 - float(np.prod([1.0 - c for c in chances]))
        for result, chance in zip(answer["results"], chances, strict=True):
            if rng.random() < chance:
                arm["clicked"] += 1
                self._report(client, answer["query_id"], str(result["product_id"]), result["rank"])
                return result
        return None

    def _shopper(self, number: int) -> dict:
        rng = np.random.default_rng([self.seed, number])
        client = str(uuid.UUID(int=int(rng.integers(2**63)) << 64 | number))
        tally: dict = defaultdict(lambda: {"queries": 0, "clicked": 0, "expected_clicked": 0.0})
        for _ in range(self.searches):
            odd = rng.random() < ODD_SHARE
            if odd:
                photo, wanted = self.odd[int(rng.integers(len(self.odd)))], "(not in the catalog)"
            else:
                photo, wanted = self.photos[int(rng.integers(len(self.photos)))]
            params = {"k": "10"}
            if self.facets and rng.random() < FILTER_SHARE:
                column = sorted(self.facets)[int(rng.integers(len(self.facets)))]
                params[column] = self.facets[column][int(rng.integers(len(self.facets[column])))]
            boundary = f"sim{uuid.uuid4().hex}"
            body = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="photo.jpg"\r\n'
                    f"Content-Type: image/jpeg\r\n\r\n").encode() + photo + f"\r\n--{boundary}--\r\n".encode()
            answer = self._call(f"/api/search?{urllib.parse.urlencode(params)}", client, body,
                                f"multipart/form-data; boundary={boundary}")
            acted = self._act(client, rng, answer, wanted, tally)
            if acted is not None and rng.random() < FOLLOW_SHARE:
                similar = self._call(f"/api/products/{urllib.parse.quote(str(acted['product_id']), safe='')}"
                                     "/similar?k=10", client)
                self._act(client, rng, similar, wanted, tally)
        return dict(tally)

    def run(self, threads: int = 4) -> dict:
        """Play every shopper (on `threads` threads); return per index version: queries, clicked, expected_clicked,
        and the click-through observed and implied."""
        totals: dict = defaultdict(lambda: {"queries": 0, "clicked": 0, "expected_clicked": 0.0})
        with ThreadPoolExecutor(threads) as pool:
            for tally in pool.map(self._shopper, range(self.shoppers)):
                for version, counts in tally.items():
                    for key, value in counts.items():
                        totals[version][key] += value
        for counts in totals.values():
            counts["ctr"] = counts["clicked"] / counts["queries"]
            counts["expected_ctr"] = counts["expected_clicked"] / counts["queries"]
        return {"shoppers": self.shoppers, "searches_per_shopper": self.searches, "prefer": self.prefer,
                "lift": self.lift, "seed": self.seed, "versions": dict(totals)}


def main(argv: list[str] | None = None) -> None:
    """Play a day from the command line and print (or write) its tallies."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="the service's URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--catalog", type=Path, required=True, help="an acquired catalog folder (DATA/catalog)")
    parser.add_argument("--shoppers", type=int, default=300)
    parser.add_argument("--searches", type=int, default=5, help="photo searches per shopper")
    parser.add_argument("--prefer", default=None, help="the index version shoppers click more on")
    parser.add_argument("--lift", type=float, default=1.5, help="how much more (a factor on each click's chance)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--out", type=Path, default=None, help="write the tallies as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    day = Day(args.base, catalog_photos(args.catalog), args.shoppers, args.searches, args.prefer, args.lift, args.seed)
    try:
        result = day.run(args.threads)
    except urllib.error.URLError as exc:
        sys.exit(f"error: the service at {args.base} did not answer: {exc}")
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
