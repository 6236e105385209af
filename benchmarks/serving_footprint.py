"""What serving costs on disk: the Beanstalk bundle's files and bytes, and the installed size of environments.

The bundle is built exactly as `scripts/deploy.py` builds it. An environment's size is the bytes of its
site-packages; give the serving-only one (requirements.txt) next to the full one to compare.

    python -m benchmarks.serving_footprint --venv full=.venv --venv serving=/tmp/serving-venv
"""

from __future__ import annotations

import argparse
import io
import zipfile
from collections import Counter
from pathlib import Path

TOP_PACKAGES = ("tensorflow", "ai_edge_litert", "pillow_heif.libs", "tf_keras", "tensorflow_hub", "pandas",
                "matplotlib", "tqdm", "annoy", "numpy", "PIL", "flask", "gunicorn", "boto3", "botocore")


def bundle_figures() -> dict:
    """Files and bytes of the deployment bundle, in all and per top-level folder."""
    from scripts import deploy
    data, _ = deploy.build_bundle()
    infos = zipfile.ZipFile(io.BytesIO(data)).infolist()
    folders = Counter(i.filename.split("/")[0] if "/" in i.filename else "." for i in infos)
    return {"files": len(infos), "zip_bytes": len(data), "bytes": sum(i.file_size for i in infos),
            "folders": dict(sorted(folders.items()))}


def tree_bytes(path: Path) -> int:
    """Bytes of every regular file under a folder (symlinks not followed)."""
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def environment_figures(venv: Path) -> dict:
    """Installed bytes of a virtual environment's site-packages, in all and for the packages that matter here."""
    site = next(Path(venv).glob("lib/python3*/site-packages"), None)
    if site is None:
        raise SystemExit(f"{venv} has no lib/python3*/site-packages: not a virtual environment")
    packages = {name: tree_bytes(site / name) for name in TOP_PACKAGES if (site / name).is_dir()}
    return {"bytes": tree_bytes(site), "distributions": len(list(site.glob("*.dist-info"))), "packages": packages}


def main(argv: list[str] | None = None) -> None:
    """Print the bundle's figures and each environment's installed size."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", action="append", default=[], metavar="NAME=DIR",
                        help="a virtual environment to measure, repeatable")
    args = parser.parse_args(argv)
    bundle = bundle_figures()
    print(f"bundle: {bundle['files']} files, {bundle['bytes']:,} bytes ({bundle['zip_bytes']:,} zipped); "
          f"files per folder: {bundle['folders']}")
    for spec in args.venv:
        name, _, folder = spec.partition("=")
        env = environment_figures(Path(folder or name))
        biggest = ", ".join(f"{k} {v / 2**20:.0f}" for k, v in sorted(env["packages"].items(), key=lambda kv: -kv[1]))
        print(f"environment {name}: {env['bytes'] / 2**20:,.0f} MiB in site-packages, {env['distributions']} "
              f"distributions; MiB of: {biggest}")


if __name__ == "__main__":
    main()
