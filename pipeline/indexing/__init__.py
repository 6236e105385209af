"""What the index stage and `remove` build an index version from, and how: the inputs checked and fingerprinted,
Annoy tuned, near-duplicates found, items and thumbnails written, delta versions, and naming versions.

- `inputs`: the embeddings checked against the catalog, and the fingerprint that makes a rerun with the same
  inputs write nothing;
- `annoy_tuning`: the smallest `search_k` that reaches the target recall, and whether an exact scan is faster;
- `duplicate_search`: near-duplicate pairs through the index's own Annoy trees, and the threshold calibrated on
  them (`runtime.duplicate_groups` turns pairs into the groups the service reads);
- `items`, `thumbnails`: the catalog as `items.jsonl` lines, and web-sized images named by content;
- `deltas`: delta versions (what changed since a full version, served over it);
- `versions`: a new version's name, and the manifest `index/current` names (the pointer itself and pruning are
  `runtime.versions`, which the service and deploy share).

It imports `pipeline.catalog` (the catalog table), `pipeline.common` and the runtime layer; never an encoder or
training.
"""
