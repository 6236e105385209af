"""scripts/deploy.py against a local moto server (S3 and Elastic Beanstalk APIs)."""

from __future__ import annotations

import io
import sys
import zipfile
from pathlib import Path

import boto3
import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import deploy  # noqa: E402


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
            "service/static/index.html", "pipeline/artifacts.py", ".platform/nginx/conf.d/upload.conf",
            ".ebextensions/01-service.config"} <= set(names)
    assert not [n for n in names if n.startswith(("data/", "tests/", ".venv/", ".git/")) or
                n.endswith((".h5", ".tflite", ".ann", ".npy", ".pyc"))]
    assert len(bundle) < 1_000_000


def test_waiting_for_health_reports_an_unhealthy_environment(s3_server: str) -> None:
    eb = boto3.client("elasticbeanstalk")
    eb.create_application(ApplicationName="visual-search")
    eb.create_environment(ApplicationName="visual-search", EnvironmentName="visual-search-test",
                          SolutionStackName=deploy.SOLUTION_STACK,
                          OptionSettings=deploy.environment_settings("s3://shop-search/prod", {"MAX_UPLOAD_MB": "8"}))
    # moto reports a new environment Ready with Health "Grey" (no data), so deploy must not call it healthy.
    with pytest.raises(RuntimeError, match="did not become Ready and Green within 1 s"):
        deploy.wait_until_healthy(eb, "visual-search-test", wait_s=1, poll_s=0.2)
