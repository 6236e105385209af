"""The item maps of an index, kept compact: a million products must not cost each gunicorn worker a gigabyte.

`items.jsonl` is memory-mapped (its pages are shared by every worker through the page cache) and a line is
parsed only when a result needs it. What search needs for every product is built once, at load, in numpy:
line offsets, a sorted product-id table for lookups, and per filterable column the ids of each value.
"""

from __future__ import annotations

import json
import mmap
from array import array
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from runtime.artifacts import ArtifactError


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
        data = np.frombuffer(self._map, np.uint8)
        ends = np.flatnonzero(data == ord("\n"))
        if len(data) and data[-1] != ord("\n"):
            ends = np.append(ends, len(data))
        starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64)
        keep = ends > starts  # blank lines are not items
        self._starts, self._ends = starts[keep], ends[keep].astype(np.int64)
        del data
        self._scan()

    def _scan(self) -> None:
        """One pass over every line: check ids, and collect product ids and each column's values."""
        product_ids: list[bytes] = []
        groups: dict[str, dict[str, array]] = {"category": {}}
        counts, image_ids = array("i"), array("i")
        for i in range(len(self)):
            item = self[i]
            if item["id"] != i:
                raise ArtifactError(f"{self.path}: line {i + 1} has id {item['id']}, expected {i}")
            product_ids.append(str(item["product_id"]).encode())
            counts.append(len(item["images"]))
            image_ids.extend(image["id"] for image in item["images"])
            groups["category"].setdefault(str(item["category"]), array("i")).append(i)
            for column, value in item["metadata"].items():
                groups.setdefault(column, {}).setdefault(str(value), array("i")).append(i)
        self.image_counts = np.frombuffer(counts, np.int32).copy()
        self.image_ids = np.frombuffer(image_ids, np.int32).copy()
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
