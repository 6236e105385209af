"""Visual product search pipeline: the stages that turn a shop's catalog into a served index.

One module per stage, where `python -m pipeline.<stage>` and `python -m pipeline <stage>` find it: `acquire`,
`finetune`, `vectorize`, `index`, `evaluate`, `duplicates` and `remove`; `run` runs them in order and `__main__` is
the command line. Stages talk only through the data directory (`runtime.layout`, data/README.md); none imports
another. `analytics` reads what the service recorded (its query and click events), not the data directory.

Their helpers live in one subpackage per concern, chosen by what imports what (each `__init__` says what it holds
and may import, and `pyproject.toml`'s import-linter contracts check it):
- `catalog`: sources read into the `catalog/` folder, and that folder read back (acquire, evaluate's queries);
- `features`: backbone features computed once per image and cached (finetune and vectorize);
- `encoders`: the pretrained backbones behind one interface;
- `training`: the head, backbone training, composites, the exported extractor and when to train again (finetune);
- `vectorizing`: vectorize's local and Spark engines and the shards they share;
- `indexing`: what an index version is built from and how (index, remove);
- `reporting`: events joined day by day into the analytics report's tables, A/B tests and charts (analytics);
- `common`: the command line, `StageError`, locks and plots, which every stage uses.

`training`, `vectorizing`, `indexing` and `reporting` import the layer below them (`catalog`, `encoders`,
`features`) and `common`, never each other; the layer below imports only `common` and the runtime layer.
"""

from pipeline.common.errors import StageError

__version__ = "0.1.0"
STAGES = ("acquire", "finetune", "vectorize", "index", "evaluate", "duplicates", "remove", "analytics")
__all__ = ["STAGES", "StageError"]
