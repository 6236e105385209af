"""kill -9 at each step that replaces what a data dir or a bucket serves: acquire's catalog swap, the extractor's
export, the index's switch of `current`, deploy's upload. A child process runs the real stage and SIGKILLs itself
right after (or before) the step; what is left must still be complete, and the next run must recover with nothing
lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import boto3
import pandas as pd
import pytest

from pipeline import acquire, finetune, index, vectorize
from runtime import artifacts, storage, versions
from runtime.layout import Layout
from scripts import deploy
from service.store import fetch_s3
from tests.helpers import ROOT

# The child's tools: run a function, then die as `kill -9` would, when the call matches.
CHILD = """
import os, pathlib, signal
from runtime import storage

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def die_after(owner, name, when=lambda *args: True):
    real = getattr(owner, name)
    def call(*args, **kwargs):
        result = real(*args, **kwargs)
        if when(*args):
            die()
        return result
    setattr(owner, name, call)

def die_before(owner, name, when=lambda *args: True):
    real = getattr(owner, name)
    def call(*args, **kwargs):
        if when(*args):
            die()
        return real(*args, **kwargs)
    setattr(owner, name, call)
"""


def killed(*code: str) -> None:
    """Run the pieces of `code` (after CHILD) in a fresh interpreter and check that it died of SIGKILL."""
    program = "\n".join([CHILD, *(textwrap.dedent(piece) for piece in code)])
    child = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True,
                           text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert child.returncode == -signal.SIGKILL, f"the child did not die where planned:\n{child.stderr[-3000:]}"


def catalog_state(data: Path) -> tuple[int, int]:
    """(rows of catalog.csv, image files): what a complete catalog holds."""
    layout = Layout(data)
    return len(pd.read_csv(layout.catalog_csv)), sum(1 for p in (layout.catalog / "images").rglob("*") if p.is_file())


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and ".lock" not in p.name)


@pytest.mark.parametrize("how", ["exchange", "aside"])
def test_acquire_killed_while_swapping_its_catalog_loses_nothing(sample_catalog: Path, tmp_path: Path,
                                                                 how: str) -> None:
    """`exchange`: Linux swaps both folders in one step; `aside`: where it cannot, the old one is renamed aside
    first, and a kill right then leaves it as the only complete catalog, which the next run puts back."""
    data = tmp_path / "data"
    acquire.run(f"fashion:{sample_catalog}", data)
    before = catalog_state(data)
    if how == "exchange":
        kill = 'die_after(storage, "_exchange")'
    else:
        kill = ('storage._exchange = lambda first, second: False\n'
                'die_after(pathlib.Path, "rename", lambda path, target: ".catalog.old-" in str(target))')
    killed(kill, f"""
        from pipeline import acquire
        acquire.run("fashion:{sample_catalog}", "{data}", holdout=0.2)
    """)
    if how == "exchange":  # the new catalog is in place, whole; the old one waits at the staging name
        assert catalog_state(data)[0] < before[0] and leftovers(data)
    else:  # no catalog/, and the previous one aside: put back, it is the catalog as it was
        assert not Layout(data).catalog.exists() and leftovers(data)
        assert storage.undo_interrupted_swap(Layout(data).catalog)
        assert catalog_state(data) == before
    acquire.run(f"fashion:{sample_catalog}", data)
    assert catalog_state(data) == before and leftovers(data) == []


def test_finetune_killed_while_exporting_leaves_a_whole_extractor(own_index: Path, tiny_hub_model: Path) -> None:
    extractor = Layout(own_index).extractor
    before = storage.read_json(extractor / "extractor.json")["export_id"]
    killed(f"""
        die_after(storage, "_exchange", lambda first, second: pathlib.Path(second).name == "extractor")
        from pipeline import finetune
        finetune.run(pathlib.Path("{own_index}"), encoder="hub:{tiny_hub_model}", dim=16, epochs=2)
    """)
    after = storage.read_json(extractor / "extractor.json")
    assert after["export_id"] != before and after["dim"] == 16  # the new one, whole
    finetune.run(own_index, encoder=f"hub:{tiny_hub_model}", dim=32, epochs=5)
    vectorize.run(own_index)
    manifest = index.run(own_index, trees=4)
    assert manifest["dim"] == 32 and not (Layout(own_index).model / ".extractor.tmp").exists()


@pytest.mark.parametrize("step", ["version written, not current", "new pointer made, not switched"])
def test_index_killed_while_switching_keeps_the_old_version_served(own_index: Path, step: str) -> None:
    layout = Layout(own_index)
    served = layout.current_index.resolve().name
    if step == "version written, not current":
        kill = 'die_after(pathlib.Path, "rename", lambda path, target: path.name.startswith(".tmp-"))'
    else:
        kill = 'die_before(os, "replace", lambda src, dst: str(dst).endswith("/index/current"))'
    killed(kill, f"""
        from pipeline import index
        index.run(pathlib.Path("{own_index}"), trees=5)
    """)
    assert layout.current_index.resolve().name == served
    artifacts.verify(layout.current_index, check_hashes=True)  # what is served is whole
    new = index.run(own_index, trees=5)["version"]
    assert layout.current_index.resolve().name == new != served
    artifacts.verify(layout.current_index, check_hashes=True)
    assert leftovers(layout.index) == []


def test_deploy_killed_while_uploading_finishes_on_the_next_run(s3_server: str, own_index: Path,
                                                                tmp_path: Path) -> None:
    boto3.client("s3").create_bucket(Bucket="shop")
    first = deploy.upload_artifacts(own_index / "index" / "current", "shop", "prod")["version"]
    second = index.run(own_index, trees=5)["version"]
    killed(f"""
        from scripts import deploy
        client = storage.s3_client()
        real, sent = client.upload_file, []
        def upload_file(*args, **kwargs):
            real(*args, **kwargs)
            sent.append(args)
            if len(sent) == 1:  # a file of the new version is stored, its manifest not yet
                die()
        client.upload_file = upload_file
        deploy.upload_artifacts(pathlib.Path("{own_index}/index/current"), "shop", "prod", client)
    """)
    assert versions.read_s3_pointer(storage.s3_client(), "shop", "prod") == first  # instances never see half of it
    again = deploy.upload_artifacts(own_index / "index" / "current", "shop", "prod")
    assert again["uploaded"] >= 1 and again["replaced"] == first
    assert fetch_s3("s3://shop/prod", tmp_path / "cache").name == second  # every file there, every hash right
