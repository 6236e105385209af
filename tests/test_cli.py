"""The command-line contract: the forms that scripts outside the repo call, run as real subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT


def cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_sample_catalog_script_is_deterministic(tmp_path: Path) -> None:
    for name in ("a", "b"):
        done = cli("scripts/make_sample_catalog.py", "--out", str(tmp_path / name), "--n", "60", "--seed", "5")
        assert done.returncode == 0, done.stderr
    assert "60 rows, 53 images, 3 broken files, 4 rows without an image" in done.stdout
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 1 + 56
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_run_end_to_end_from_the_command_line(sample_catalog: Path, tiny_hub_model: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    done = cli("-m", "pipeline", "run", "--source", f"fashion:{sample_catalog}", "--data-dir", str(data),
               "--encoder", f"hub:{tiny_hub_model}", "--label-column", "category", "--eval-split", "0.2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "acquire:   80 rows -> " in done.stdout and "evaluate:  " in done.stdout
    manifest = json.loads((data / "index" / "current" / "manifest.json").read_text())
    assert manifest["encoder"] == f"hub:{tiny_hub_model}"
    report = json.loads((data / "eval" / "report.json").read_text())
    assert report["n_queries"] > 0

    evaluated = cli("-m", "pipeline", "evaluate", "--index", str(data / "index" / "current"),
                    "--queries", f"csv:{data / 'catalog' / 'queries.csv'}", "--k", "5",
                    "--report", str(tmp_path / "again.json"))
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert json.loads((tmp_path / "again.json").read_text())["n_queries"] == report["n_queries"]


@pytest.mark.parametrize("args, message", [
    (["acquire", "--source", "fashion:/no/such/dir", "--data-dir", "{tmp}"], "error: fashion source not found"),
    (["finetune", "--data-dir", "{tmp}"], "error: no catalog at"),
    (["index", "--data-dir", "{tmp}"], "error: no catalog at|error: no embeddings"),
    (["evaluate", "--index", "{tmp}", "--queries", "folders:{tmp}"], "error: no index at"),
])
def test_user_mistakes_get_one_line_errors(args: list[str], message: str, tmp_path: Path) -> None:
    done = cli("-m", "pipeline", *[a.replace("{tmp}", str(tmp_path)) for a in args], timeout=120)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    import re

    assert re.search(message, done.stderr), done.stderr


def test_help_lists_the_stages() -> None:
    done = cli("-m", "pipeline", "--help", timeout=60)
    assert done.returncode == 0 and "acquire -> finetune -> vectorize -> index -> evaluate" in done.stdout
    assert "--eval-split" in cli("-m", "pipeline", "run", "--help", timeout=60).stdout
