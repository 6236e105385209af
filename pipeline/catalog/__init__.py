"""A shop's catalog: where its sources are read, how their images become the `catalog/` folder, and that folder
read back by the later stages.

- `sources`: each source kind (fashion, folders, csv, grocery, s3, kaggle) read into `records.Record`s;
  `grocery` is the GroceryStoreDataset layout; `records` what a source yields and rejects;
- `fetch`: an image's bytes from a file, an http(s) URL or an S3 object, or word that they have not changed;
- `ingest`: records to a catalog folder (acquire, and evaluate's query photos), every image checked and normalised;
- `table`: `catalog/catalog.csv` as finetune, vectorize and index read it, and the held-out split.

It imports the runtime layer and `pipeline.common` only: no encoder, no training, no index.
"""
