"""The command-line contract: the forms that scripts outside the repo call, run as real subprocesses."""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

from pipeline import STAGES
from pipeline.__main__ import build_parser
from pipeline.catalog.records import SourceError
from pipeline.common import cli
from tests.helpers import ROOT

COMMANDS = (*STAGES, "run")


def cli_run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_sample_catalog_script_is_deterministic(tmp_path: Path) -> None:
    for name in ("a", "b"):
        done = cli_run("scripts/make_sample_catalog.py", "--out", str(tmp_path / name), "--n", "60", "--seed", "5")
        assert done.returncode == 0, done.stderr
    assert "60 rows, 53 images, 3 broken files, 4 rows without an image" in done.stdout
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 1 + 56
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_run_end_to_end_from_the_command_line(sample_catalog: Path, tiny_hub_model: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    done = cli_run("-m", "pipeline", "run", "--source", f"fashion:{sample_catalog}", "--data-dir", str(data),
                   "--encoder", f"hub:{tiny_hub_model}", "--label-column", "category", "--eval-split", "0.2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "acquire:   80 images -> " in done.stdout and "evaluate:  " in done.stdout
    manifest = json.loads((data / "index" / "current" / "manifest.json").read_text())
    assert manifest["encoder"] == f"hub:{tiny_hub_model}"
    report = json.loads((data / "eval" / "report.json").read_text())
    assert report["n_queries"] > 0

    evaluated = cli_run("-m", "pipeline.evaluate", "--data-dir", str(data), "--index", str(data / "index"),
                        "--queries", f"csv:{data / 'catalog' / 'queries.csv'}", "--k", "5",
                        "--report", str(tmp_path / "again.json"))
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert json.loads((tmp_path / "again.json").read_text())["n_queries"] == report["n_queries"]
    assert f"-> {tmp_path / 'again.json'}" in evaluated.stdout


@pytest.mark.parametrize("args, message", [
    (["acquire", "--source", "fashion:/no/such/dir", "--data-dir", "{tmp}"], "error: fashion source not found"),
    (["finetune", "--data-dir", "{tmp}"], "error: no catalog at"),
    (["index", "--data-dir", "{tmp}"], "error: no catalog at|error: no embeddings"),
    (["evaluate", "--data-dir", "{tmp}", "--queries", "folders:{tmp}"], "error: no index at"),
    (["vectorize", "--data-dir", "{tmp}"], "error: no catalog at"),
    (["vectorize", "--data-dir", "s3://bucket/data"], "error: an s3:// data dir needs --engine spark"),
    (["duplicates", "--data-dir", "{tmp}"], "error: no index at"),
    (["remove", "--data-dir", "{tmp}", "SKU-1"], "error: no index at"),
    (["acquire", "--source", "nonsense:{tmp}/x", "--data-dir", "{tmp}"], "error: unknown source"),
    (["vectorize"], "the following arguments are required: --data-dir"),
])
def test_user_mistakes_get_one_line_errors(args: list[str], message: str, tmp_path: Path) -> None:
    done = cli_run("-m", "pipeline", *[a.replace("{tmp}", str(tmp_path)) for a in args], timeout=120)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert re.search(message, done.stderr), done.stderr


def test_help_lists_the_commands() -> None:
    done = cli_run("-m", "pipeline", "--help", timeout=60)
    assert done.returncode == 0
    assert "acquire -> finetune -> vectorize -> index -> evaluate" in " ".join(done.stdout.split())
    for command in COMMANDS:
        assert re.search(rf"^\s+{command}\s+\S", done.stdout, re.MULTILINE), (command, done.stdout)
    assert cli_run("-m", "pipeline", timeout=60).returncode == 2  # no command: usage on stderr, not a run


@pytest.mark.parametrize("command", COMMANDS)
def test_every_stage_prints_its_usage_both_ways(command: str) -> None:
    module = importlib.import_module(f"pipeline.{command}")
    parser = cli.configure(argparse.ArgumentParser(), module)
    positional = {a.dest for a in parser._actions if not a.option_strings}
    flags = {f"--{name.replace('_', '-')}" for name in inspect.signature(module.run).parameters
             if name not in positional}
    for form, prog in ((["-m", f"pipeline.{command}"], f"python -m pipeline.{command}"),
                       (["-m", "pipeline", command], f"python -m pipeline {command}")):
        done = cli_run(*form, "--help", timeout=60)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.startswith(f"usage: {prog} ")
        assert module.__doc__.splitlines()[0] in " ".join(done.stdout.split())
        assert flags <= set(re.findall(r"--[a-z][a-z-]*", done.stdout)), flags


@pytest.mark.parametrize("command", COMMANDS)
def test_every_run_keyword_has_a_flag_and_the_defaults_agree(command: str) -> None:
    module = importlib.import_module(f"pipeline.{command}")
    parser = cli.configure(argparse.ArgumentParser(), module)
    dests = {a.dest: a for a in parser._actions if a.dest not in ("help", "verbose")}
    parameters = inspect.signature(module.run).parameters
    assert set(dests) == set(parameters)
    for name, parameter in parameters.items():
        if parameter.default is inspect.Parameter.empty:
            assert dests[name].required, name
        else:
            assert dests[name].default == parameter.default, name


def test_options_reach_run_by_keyword(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                      capsys: pytest.CaptureFixture) -> None:
    from pipeline import finetune

    seen = {}

    def fake_run(**kwargs: object) -> dict:
        seen.update(kwargs)
        return {"encoder": "e", "products": 1, "backbone_images_computed": 0, "finetuned": False}

    monkeypatch.setattr(finetune, "run", fake_run)
    main = build_parser()
    options = vars(main.parse_args(["finetune", "--data-dir", str(tmp_path), "--seed", "7", "--dim", "64",
                                    "--encoder", "autoencoder"]))
    cli.invoke(finetune, {k: v for k, v in options.items() if k != "command"})
    assert seen["seed"] == 7 and seen["dim"] == 64 and seen["encoder"] == "autoencoder"
    assert seen["data_dir"] == tmp_path and "verbose" not in seen
    assert "finetune: e on 1 products" in capsys.readouterr().out


def test_only_a_stage_error_is_one_line_and_a_bug_keeps_its_traceback(capsys: pytest.CaptureFixture) -> None:
    """What the user must fix is `StageError`; a ValueError from a bug must not pass for bad input."""
    stage = types.ModuleType("pipeline.fake")
    stage.describe = lambda summary, options: "done"

    def user_mistake(**options: object) -> dict:
        raise SourceError("csv manifest not found: /x.csv")  # a StageError

    stage.run = user_mistake
    with pytest.raises(SystemExit) as stopped:
        cli.invoke(stage, {})
    assert stopped.value.code == "error: csv manifest not found: /x.csv"

    def bug(**options: object) -> dict:
        return {"n": int("not a number")}

    stage.run = bug
    with pytest.raises(ValueError, match="invalid literal"):
        cli.invoke(stage, {})
    assert "done" not in capsys.readouterr().out
