"""Visual product search pipeline: acquire, finetune, vectorize, index, evaluate, and the duplicates report (one
module per stage).

Stages talk only through the data directory (`runtime.layout`); each imports the runtime layer and its
own helpers, never another stage. `python -m pipeline <stage>` or `python -m pipeline.<stage>` runs one.
"""

__version__ = "0.1.0"
STAGES = ("acquire", "finetune", "vectorize", "index", "evaluate", "duplicates", "remove")
