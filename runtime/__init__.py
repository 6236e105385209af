"""The runtime layer shared by the pipeline's stages and the query service.

What both sides must agree on lives here and only here: the data contract (`layout`: every folder and file
name), image decoding and preprocessing to the model's input (`imaging`, `preprocess`), the feature extractor
loader (`extractor`), embeddings I/O (`embeddings`), index folders (`artifacts`), exact top-k (`topk`), file
and S3 helpers (`storage`) and TensorFlow's environment (`tfenv`). It imports neither `pipeline` nor
`service`, and needs only what the service installs (requirements.txt).
"""
