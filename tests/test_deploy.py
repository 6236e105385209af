"""scripts/deploy.py against a local moto server (S3 and Elastic Beanstalk APIs), and the bundle it ships."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import boto3
import pytest

from benchmarks.common import load_script

deploy = load_script("deploy")
# What the pipeline needs and the service must not: the bundle installs requirements.txt only.
PIPELINE_ONLY = ("pipeline", "benchmarks", "pandas", "tensorflow_hub", "tf_keras", "tqdm", "matplotlib")


def test_artifacts_upload_skips_unchanged_files_and_the_service_loads_them(s3_server: str, demo_index: Path,
                                                                           tmp_path: Path) -> None:
    from service import create_app

    boto3.client("s3").create_bucket(Bucket="shop-search")
    first = deploy.upload_artifacts(demo_index / "index" / "current", "shop-search", "prod")
    again = deploy.upload_artifacts(demo_index / "index" / "current", "shop-search", "prod")
    assert first["uploaded"] > 50 and first["skipped"] == 0
    assert again["uploaded"] == 0 and again["skipped"] == first["uploaded"]
    assert first["artifacts"] == "s3://shop-search/prod"
    app = create_app({"ARTIFACTS": first["artifacts"], "LOAD_IN_BACKGROUND": False,
                      "ARTIFACTS_CACHE": str(tmp_path)})
    assert app.test_client().get("/health").get_json()["version"] == first["version"]


def test_bundle_holds_code_only_and_is_reproducible() -> None:
    bundle, digest = deploy.build_bundle()
    assert deploy.build_bundle() == (bundle, digest)
    names = zipfile.ZipFile(io.BytesIO(bundle)).namelist()
    assert {"application.py", "Procfile", "gunicorn.conf.py", "requirements.txt", "service/__init__.py",
            "service/static/index.html", "runtime/artifacts.py", "runtime/extractor.py",
            ".platform/nginx/conf.d/upload.conf", ".ebextensions/01-service.config"} <= set(names)
    assert not [n for n in names if n.startswith(("pipeline/", "benchmarks/", "scripts/", "data/", "tests/", ".venv/",
                                                  ".git/")) or n.endswith((".h5", ".tflite", ".ann", ".npy", ".pyc"))]
    assert len(bundle) < 200_000


def test_bundle_serves_without_the_pipeline_or_its_packages(demo_index: Path, tmp_path: Path) -> None:
    bundle, _ = deploy.build_bundle()
    app_dir = tmp_path / "app"
    zipfile.ZipFile(io.BytesIO(bundle)).extractall(app_dir)
    # What gunicorn does with the Procfile (import application:application), with every pipeline-only module
    # made unimportable: an import of any of them anywhere in the service fails this test.
    script = f"""
import io, json, sys
sys.modules.update(dict.fromkeys({PIPELINE_ONLY!r}))
from application import application
import runtime, service
image = next(__import__("pathlib").Path({str(demo_index / "catalog" / "images")!r}).rglob("*.jpg")).read_bytes()
response = application.test_client().post("/api/search?k=3", data={{"image": (io.BytesIO(image), "q.jpg")}})
print(json.dumps({{"status": response.status_code, "results": len(response.get_json()["results"]),
                  "files": [runtime.__file__, service.__file__]}}))
"""
    env = {**os.environ, "ARTIFACTS": str(demo_index / "index" / "current"), "LOAD_IN_BACKGROUND": "false",
           "ARTIFACTS_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", script], cwd=app_dir, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["status"] == 200 and result["results"] == 3
    assert all(Path(f).is_relative_to(app_dir) for f in result["files"])  # the bundle's code, not the checkout's


def test_waiting_for_health_reports_an_unhealthy_environment(s3_server: str) -> None:
    eb = boto3.client("elasticbeanstalk")
    eb.create_application(ApplicationName="visual-search")
    eb.create_environment(ApplicationName="visual-search", EnvironmentName="visual-search-test",
                          SolutionStackName=deploy.SOLUTION_STACK,
                          OptionSettings=deploy.environment_settings("s3://shop-search/prod", {"MAX_UPLOAD_MB": "8"}))
    # moto reports a new environment Ready with Health "Grey" (no data), so deploy must not call it healthy.
    with pytest.raises(RuntimeError, match="did not become Ready and Green within 1 s"):
        deploy.wait_until_healthy(eb, "visual-search-test", wait_s=1, poll_s=0.2)
