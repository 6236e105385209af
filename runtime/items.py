"""An index version's products: `items.jsonl` (and a delta's `added.jsonl`), one JSON line per product, line i
describing product i and listing its images' dense ids.

Every reader of those files is here, each for its own use:
- `ItemStore`, the service's: the file memory-mapped (its pages are shared by every worker through the page cache)
  and a line parsed only when a result needs it; what search needs for every product is built once, at load, in
  numpy (line offsets, a sorted product-id table, per filterable column the ids of each value), so that a million
  products do not cost each gunicorn worker a gigabyte;
- `read_items`, the stages': every product as a dict, for those that go through all of them once;
- `find_products`, `pipeline remove`'s: a few product ids' numbers out of millions, without parsing the lines.

The first two skip blank lines and check that line i has id i the same way (`checked`); `flatten` turns products'
image lists into the two arrays that `runtime.products.ProductSearch` and the near-duplicate search take.
"""

from __future__ import annotations

import json
import mmap
import re
from array import array
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from runtime.artifacts import ArtifactError
from runtime.layout import ITEMS_FILE


def flatten(image_lists: Iterable[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Return (image count per product, all image ids in product order) from each product's image ids."""
    counts, flat = array("i"), array("i")
    for ids in image_lists:
        counts.append(len(ids))
        flat.extend(ids)
    return np.frombuffer(counts, np.int32).copy(), np.frombuffer(flat, np.int32).copy()


def flatten_items(items: Iterable[dict]) -> tuple[np.ndarray, np.ndarray]:
    """`flatten` of each item's images."""
    return flatten([image["id"] for image in item["images"]] for item in items)


def line_spans(data: bytes | mmap.mmap) -> tuple[np.ndarray, np.ndarray]:
    """The start and end offsets of a JSON-lines buffer's lines, blank lines left out (they are not items)."""
    raw = np.frombuffer(data, np.uint8) if len(data) else np.empty(0, np.uint8)
    ends = np.flatnonzero(raw == ord("\n"))
    if len(raw) and raw[-1] != ord("\n"):
        ends = np.append(ends, len(raw))
    starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64)
    keep = ends > starts
    return starts[keep], ends[keep].astype(np.int64)


def checked(item: dict, number: int, path: Path) -> dict:
    """The item of line `number`, or an ArtifactError when its id is not its line number."""
    if item["id"] != number:
        raise ArtifactError(f"{path}: line {number + 1} has id {item['id']}, expected {number}")
    return item


def read_items(path: Path) -> list[dict]:
    """Return every product of an items file: entry i describes product i (product id, name, category, images,
    metadata). The file is read a line at a time (a million products: 600 MB of text, never held at once).

    Raises:
        ArtifactError: a line whose id is not its number.
    """
    path = Path(path)
    with open(path, encoding="utf-8") as fh:
        items = [json.loads(line) for line in fh if line.strip()]
    return [checked(item, number, path) for number, item in enumerate(items)]


class ItemStore(Sequence):
    """Entry i is the dict of product i (id, product_id, name, category, image, thumbnail, images, metadata).

    `image_counts` and `image_ids` list each product's images (dense image ids: items of the Annoy index and
    rows of its vectors), product after product.

    Args:
        path: an index folder's `items.jsonl` (line i describes item i).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as fh:
            self._map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if self.path.stat().st_size else b""
        self._starts, self._ends = line_spans(self._map)
        self._scan()

    def _scan(self) -> None:
        """One pass over every line: check ids, and collect product ids, image ids and each column's values."""
        product_ids: list[bytes] = []
        groups: dict[str, dict[str, array]] = {"category": {}}

        def image_lists() -> Iterator[list[int]]:
            for i in range(len(self)):
                item = checked(self[i], i, self.path)
                product_ids.append(str(item["product_id"]).encode())
                groups["category"].setdefault(str(item["category"]), array("i")).append(i)
                for column, value in item["metadata"].items():
                    groups.setdefault(column, {}).setdefault(str(value), array("i")).append(i)
                yield [image["id"] for image in item["images"]]

        self.image_counts, self.image_ids = flatten(image_lists())
        pids = np.array(product_ids, dtype=bytes) if product_ids else np.empty(0, "S1")
        self._pid_order = np.argsort(pids, kind="stable")
        self._pids = pids[self._pid_order]
        if len(self._pids) > 1 and np.any(self._pids[1:] == self._pids[:-1]):
            raise ArtifactError(f"{self.path}: product ids are not unique")
        self.ids_by_value: dict[str, dict[str, np.ndarray]] = {}
        for column, values in groups.items():
            arrays = {v: np.frombuffer(ids, dtype=np.int32).copy() for v, ids in values.items()}
            covered = sum(len(a) for a in arrays.values())
            if covered < len(self):  # products without this column have the value ''
                mask = np.ones(len(self), bool)
                for a in arrays.values():
                    mask[a] = False
                arrays[""] = np.concatenate([arrays.get("", np.empty(0, np.int32)),
                                             np.flatnonzero(mask).astype(np.int32)])
            self.ids_by_value[column] = arrays
        self.columns = sorted(groups)

    def __len__(self) -> int:
        return len(self._starts)

    def __getitem__(self, i: int) -> dict:  # type: ignore[override]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        return json.loads(self._map[int(self._starts[i]):int(self._ends[i])])

    def __iter__(self) -> Iterator[dict]:
        return (self[i] for i in range(len(self)))

    def lookup(self, product_id: str) -> int:
        """Return the item id of a product id; KeyError when the index does not have it."""
        key = product_id.encode()
        at = int(np.searchsorted(self._pids, key))
        if at < len(self._pids) and self._pids[at] == key:
            return int(self._pid_order[at])
        raise KeyError(product_id)

    def nbytes(self) -> int:
        """Private memory of the numpy tables (the mapped file itself is shared page cache)."""
        tables = [self._starts, self._ends, self._pids, self._pid_order, self.image_counts, self.image_ids]
        tables += [a for values in self.ids_by_value.values() for a in values.values()]
        return sum(a.nbytes for a in tables)


_PRODUCT_ID = re.compile(rb'^\{"id": (\d+), "product_id": ("(?:[^"\\\n]|\\.)*")', re.MULTILINE)


def find_products(folder: Path, product_ids: set[str]) -> dict[str, int]:
    """Return {product id: product number} for those of `product_ids` that the version's items.jsonl lists.

    One pass over the file's bytes that parses only the product ids (the index stage writes each line's id and
    product_id first), so that it costs seconds at millions of products; a line written otherwise is parsed whole.
    """
    wanted = {json.dumps(p, ensure_ascii=False).encode(): p for p in product_ids}
    found: dict[str, int] = {}
    path = Path(folder) / ITEMS_FILE
    with open(path, "rb") as fh:
        if not path.stat().st_size:
            return found
        data = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            lines = len(line_spans(data)[0])
            matched = 0
            for match in _PRODUCT_ID.finditer(data):
                matched += 1
                if match.group(2) in wanted:
                    found[wanted[match.group(2)]] = int(match.group(1))
            if matched != lines:  # not the index stage's key order: the slow, sure way
                found = {str(item["product_id"]): int(item["id"]) for item in read_items(path)
                         if str(item["product_id"]) in product_ids}
        finally:
            data.close()
    return found
