"""finetune's work on top of a frozen backbone: the head, the backbone's own training, composites, the cache of
trained backbones, the exported extractor, and whether to train at all.

- `head`: the feature-vector layer and cosine classifier, trained on cached features (`batches` streams them);
- `backbone_tuning`: the backbone trained end to end under the head, on augmented images;
- `lite_tuning`: EfficientNet-Lite2's top blocks trained under the head, on the frozen blocks' activations
  computed once;
- `tuned_cache`: trained backbones kept in `cache/tuned/`, keyed by everything that trained them;
- `composite`: several backbones as one encoder, a trainable part trained with its own head first;
- `export`: the extractor folder (`model/extractor/`) that vectorize, evaluate and the service load;
- `retrain_rule`: whether a rerun trains again (`--retrain auto|always|never`) or keeps the model.

It imports `pipeline.encoders`, `pipeline.features`, `pipeline.common` and the runtime layer; never the catalog's
sources, a vectorize engine or the index.
"""
