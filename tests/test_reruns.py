"""Reruns cost what changed and leave nothing behind: the same inputs make no new index version, stale shards are
refused, failed runs clean up, one run per folder at a time, and an S3 mirror follows ETags and deletions."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from pipeline import acquire, index, reruns
from runtime import storage
from runtime.layout import Layout


@pytest.fixture()
def data(built: Path, tmp_path: Path) -> Path:
    """A copy of the built data dir (catalog, model, embeddings, index) for one test."""
    out = tmp_path / "data"
    for folder in ("catalog", "model", "embeddings", "index", "cache"):
        shutil.copytree(built / folder, out / folder, symlinks=True)
    return out


def versions(data: Path) -> list[str]:
    return sorted(p.name for p in (data / "index").iterdir() if p.is_dir() and not p.is_symlink()
                  and not p.name.startswith("."))


def test_the_same_inputs_make_no_new_version(data: Path) -> None:
    first = index.run(data, trees=4)
    again = index.run(data, trees=4)
    assert again["unchanged"] is True and again["version"] == first["version"] and "unchanged" not in first
    assert (data / "index" / "current").resolve().name == first["version"]
    cli = subprocess.run([sys.executable, "-m", "pipeline", "index", "--data-dir", str(data), "--trees", "4"],
                         capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0 and "nothing changed since version " + first["version"] in cli.stdout, cli.stderr
    before = versions(data)
    # a renamed product changes no image and no vector, but shoppers must see the new name: a new version
    catalog = pd.read_csv(Layout(data).catalog_csv, dtype=str, keep_default_na=False)
    catalog.loc[0, "name"] = "Renamed product"
    catalog.to_csv(Layout(data).catalog_csv, index=False)
    renamed = index.run(data, trees=4)
    assert "unchanged" not in renamed and renamed["version"] not in before
    items = (data / "index" / "current" / "items.jsonl").read_text()
    assert "Renamed product" in items
    assert "unchanged" not in index.run(data, trees=4, scoring="max")  # another option: another version


def test_shards_made_from_other_images_are_refused(data: Path) -> None:
    layout = Layout(data)
    catalog = pd.read_csv(layout.catalog_csv, dtype=str, keep_default_na=False)
    # acquire run again on a catalog of as many rows, one of them now another photo: the old vectors must not serve
    catalog.loc[3, ["image", "sha256"]] = catalog.loc[7, ["image", "sha256"]].tolist()
    catalog.to_csv(layout.catalog_csv, index=False)
    with pytest.raises(ValueError, match=r"part-00000.npy was not made from catalog rows 0\.\.15 .*re-run vectorize"):
        index.run(data, trees=4)
    summary = storage.read_json(layout.embeddings_summary)
    storage.write_json(layout.embeddings_summary, {**summary, "export_id": "another"})
    with pytest.raises(ValueError, match="another extractor"):
        index.run(data, trees=4)


def test_a_failed_build_leaves_no_staging_folder_and_the_next_run_removes_old_ones(
        data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    current = (data / "index" / "current").resolve().name
    leftover = data / "index" / ".tmp-20200101T000000-000000"
    (leftover / "thumbs").mkdir(parents=True)
    (leftover / "index.ann").write_bytes(b"x" * 1000)  # what a killed run leaves

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(index, "build_thumbnails", disk_full)
    with pytest.raises(OSError, match="No space"):
        index.run(data, trees=4)
    assert list((data / "index").glob(".tmp-*")) == []  # the old leftover and this run's staging folder
    assert (data / "index" / "current").resolve().name == current  # still served


def test_one_run_per_folder_at_a_time(data: Path, tmp_path: Path) -> None:
    with reruns.locked(data / "index", "index"):
        with pytest.raises(ValueError, match="another index run is working in"):
            index.run(data, trees=4)
    assert "unchanged" not in index.run(data, trees=4)  # released: the next run goes ahead


def test_acquire_removes_what_a_killed_run_left(sample_catalog: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    for name in (".catalog.tmp-99999", ".catalog.old-99999"):
        (data / name / "images").mkdir(parents=True)
    acquire.run(f"fashion:{sample_catalog}", data)
    assert sorted(p.name for p in data.iterdir() if p.name.startswith(".catalog")) == []
    assert Layout(data).catalog_csv.is_file()


def test_s3_mirror_follows_etags_and_deletions(s3_server, tmp_path: Path) -> None:
    client = storage.s3_client()
    client.create_bucket(Bucket="shop")
    client.put_object(Bucket="shop", Key="spring/a.txt", Body=b"first")
    client.put_object(Bucket="shop", Key="spring/gone.txt", Body=b"soon deleted")
    root = storage.mirror_s3("s3://shop/spring", tmp_path / "mirror")
    assert (root / "a.txt").read_bytes() == b"first" and (root / "gone.txt").is_file()
    client.put_object(Bucket="shop", Key="spring/a.txt", Body=b"other")  # same size, new content
    client.delete_object(Bucket="shop", Key="spring/gone.txt")
    storage.mirror_s3("s3://shop/spring", tmp_path / "mirror")
    assert (root / "a.txt").read_bytes() == b"other" and not (root / "gone.txt").exists()
    assert sorted(p.name for p in root.iterdir()) == ["a.txt"]  # the ETags live outside the mirror
    etags = next((tmp_path / "mirror" / ".etags").rglob("*.json"))
    assert list(json.loads(etags.read_text())) == ["a.txt"]
