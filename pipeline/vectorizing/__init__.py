"""vectorize's two engines and the work they share: `shards` plans the embedding shards and embeds one (the same
bytes whichever engine runs it); `local_engine` runs them in this process, `spark_engine` as one Spark task each.

It imports `pipeline.features`, `pipeline.catalog` (the catalog table), `pipeline.common` and the runtime layer;
never training or the index.
"""
