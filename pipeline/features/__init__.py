"""Backbone features: computed once per image (`compute`) into an on-disk cache keyed by the image's sha256
(`cache`), which finetune trains on and both vectorize engines embed from, so that an image goes through the
backbone once whatever runs after.

It imports the runtime layer and `pipeline.common` only; training and vectorizing import it.
"""
