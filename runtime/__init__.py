"""The runtime layer shared by the pipeline's stages, the query service and the deploy command.

What they must agree on lives here and only here:
- the data contract, every folder and file name (`layout`);
- index versions: reading and verifying one (`artifacts`), its products (`items`), the pointer to the one served
  and pruning old ones (`versions`), embeddings I/O (`embeddings`);
- searching it: product search over per-image vectors (`products`), exact top-k (`topk`), near-duplicate groups
  (`duplicate_groups`);
- images: decoding (`imaging`), preprocessing to the model's input (`preprocess`), multi-crop views (`views`), and
  the feature extractor that embeds them (`extractor`, `tfenv` for TensorFlow's environment);
- I/O: files, folder swaps and S3 through one client per thread (`storage`), and fetching a URL safely (`fetch`).

It imports neither `pipeline` nor `service` nor `scripts`, and needs only what the service installs
(requirements.txt).
"""
