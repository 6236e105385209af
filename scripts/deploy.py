"""Deploy to AWS Elastic Beanstalk in one command: artifacts to S3, a code-only bundle, a version, the environment.

    python scripts/deploy.py --artifacts data/shop/index/current --bucket my-shop-search \
        --application visual-search --environment visual-search-prod

Steps: (1) upload the index folder to s3://BUCKET/PREFIX/<version>/ (files whose sha256 is already there are
skipped) and point s3://BUCKET/PREFIX/CURRENT at it; (2) zip the service's code (the service and the runtime
layer it imports: never the pipeline, data or models); (3) upload the zip and create an application version;
(4) update the environment, or create it; (5) wait until Beanstalk reports it Ready and Green, then check
/health. AWS credentials and region come from the usual boto3 sources; AWS_ENDPOINT_URL points boto3 at
another server (the tests use moto's).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

from runtime import artifacts, storage
from runtime.layout import MANIFEST, S3_POINTER

ROOT = Path(__file__).resolve().parents[1]
# The service and the runtime layer it imports; never the pipeline's stages, data or models.
BUNDLE_FILES = ("application.py", "Procfile", "gunicorn.conf.py", "requirements.txt")
BUNDLE_DIRS = ("runtime", "service", ".platform", ".ebextensions")
BUNDLE_SKIP = ("__pycache__", ".pyc")
SOLUTION_STACK = "64bit Amazon Linux 2023 v4.3.0 running Python 3.11"
FIXED_TIME = (2020, 1, 1, 0, 0, 0)


def upload_artifacts(folder: Path, bucket: str, prefix: str, client=None) -> dict:
    """Upload a verified index folder to s3://bucket/prefix/<version>/, skipping files already there.

    Returns:
        Counts of uploaded and skipped files, and the S3 URI the service's ARTIFACTS should name.
    """
    folder = artifacts.resolve_index(folder)
    manifest = artifacts.verify(folder)
    client = client or storage.s3_client()
    base = f"{prefix.strip('/')}/{manifest['version']}" if prefix.strip("/") else manifest["version"]
    uploaded = skipped = 0
    for rel, entry in sorted(manifest["files"].items()) + [(MANIFEST, None)]:
        key = f"{base}/{rel}"
        sha = entry["sha256"] if entry else storage.sha256_file(folder / rel)
        try:
            head = client.head_object(Bucket=bucket, Key=key)
            if head.get("Metadata", {}).get("sha256") == sha:
                skipped += 1
                continue
        except client.exceptions.ClientError:
            pass
        client.upload_file(str(folder / rel), bucket, key, ExtraArgs={"Metadata": {"sha256": sha}})
        uploaded += 1
    pointer = f"{prefix.strip('/')}/{S3_POINTER}" if prefix.strip("/") else S3_POINTER
    client.put_object(Bucket=bucket, Key=pointer, Body=manifest["version"].encode())
    return {"uploaded": uploaded, "skipped": skipped, "version": manifest["version"],
            "artifacts": f"s3://{bucket}/{prefix.strip('/')}".rstrip("/")}


def build_bundle(root: Path = ROOT) -> tuple[bytes, str]:
    """Zip the service's code deterministically; return (zip bytes, content hash for the version label)."""
    files = [root / name for name in BUNDLE_FILES]
    for folder in BUNDLE_DIRS:
        files += [p for p in (root / folder).rglob("*") if p.is_file()]
    files = sorted(p for p in files if not any(s in str(p) for s in BUNDLE_SKIP))
    buffer, digest = io.BytesIO(), hashlib.sha256()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle:
        for path in files:
            rel = path.relative_to(root).as_posix()
            info = zipfile.ZipInfo(rel, FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            data = path.read_bytes()
            bundle.writestr(info, data)
            digest.update(rel.encode() + b"\0" + data)
    return buffer.getvalue(), digest.hexdigest()[:12]


def environment_settings(artifacts_uri: str, extra: dict[str, str]) -> list[dict]:
    """Beanstalk option settings that set the service's environment properties."""
    values = {"ARTIFACTS": artifacts_uri, **extra}
    return [{"Namespace": "aws:elasticbeanstalk:application:environment", "OptionName": k, "Value": v}
            for k, v in values.items()]


def deploy(artifacts_dir: Path, bucket: str, application: str, environment: str, prefix: str = "artifacts",
           properties: dict[str, str] | None = None, wait_s: float = 900, poll_s: float = 10) -> dict:
    """Run every deployment step and return what was done; raise RuntimeError when the environment stays unhealthy."""
    import boto3

    s3 = storage.s3_client()
    eb = boto3.client("elasticbeanstalk")
    result = {"artifacts": upload_artifacts(artifacts_dir, bucket, prefix, s3)}
    bundle, digest = build_bundle()
    label = f"{application}-{digest}"
    key = f"bundles/{label}.zip"
    s3.put_object(Bucket=bucket, Key=key, Body=bundle)
    result["bundle"] = {"s3": f"s3://{bucket}/{key}", "bytes": len(bundle), "version_label": label}
    if not eb.describe_applications(ApplicationNames=[application])["Applications"]:
        eb.create_application(ApplicationName=application, Description="Visual product search")
    known = eb.describe_application_versions(ApplicationName=application, VersionLabels=[label])
    if not known["ApplicationVersions"]:
        eb.create_application_version(ApplicationName=application, VersionLabel=label, Process=True,
                                      SourceBundle={"S3Bucket": bucket, "S3Key": key})
    settings = environment_settings(result["artifacts"]["artifacts"], properties or {})
    existing = [e for e in eb.describe_environments(ApplicationName=application,
                                                    EnvironmentNames=[environment])["Environments"]
                if e["Status"] not in ("Terminated", "Terminating")]
    if existing:
        eb.update_environment(EnvironmentName=environment, VersionLabel=label, OptionSettings=settings)
        result["environment"] = "updated"
    else:
        eb.create_environment(ApplicationName=application, EnvironmentName=environment, VersionLabel=label,
                              SolutionStackName=SOLUTION_STACK, OptionSettings=settings)
        result["environment"] = "created"
    result["health"] = wait_until_healthy(eb, environment, wait_s, poll_s)
    return result


def wait_until_healthy(eb, environment: str, wait_s: float, poll_s: float) -> dict:
    """Poll until Beanstalk says Ready and Green, then check the service's own /health through the CNAME."""
    deadline = time.monotonic() + wait_s
    state = {}
    while time.monotonic() < deadline:
        env = eb.describe_environments(EnvironmentNames=[environment])["Environments"][0]
        state = {"status": env["Status"], "health": env.get("Health"), "cname": env.get("CNAME", "")}
        print(f"deploy: {environment}: {state['status']}, health {state['health']}", flush=True)
        if state["status"] == "Ready" and state["health"] == "Green":
            if state["cname"]:
                with urllib.request.urlopen(f"http://{state['cname']}/health", timeout=30) as response:
                    state["service"] = json.loads(response.read())
            return state
        time.sleep(poll_s)
    raise RuntimeError(f"{environment} did not become Ready and Green within {wait_s:.0f} s (last: {state}); "
                       "see the environment's events and logs in the Beanstalk console")


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and deploy."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, required=True, help="index folder (e.g. DATA/index/current)")
    parser.add_argument("--bucket", required=True, help="S3 bucket for artifacts and code bundles")
    parser.add_argument("--prefix", default="artifacts", help="key prefix of the artifacts (default artifacts)")
    parser.add_argument("--application", default="visual-search")
    parser.add_argument("--environment", default="visual-search-prod")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an environment property, e.g. --set ADMIN_TOKEN=... --set IMAGE_BASE_URL=...")
    parser.add_argument("--wait", type=float, default=900, help="seconds to wait for a healthy environment")
    args = parser.parse_args(argv)
    properties = dict(item.split("=", 1) for item in args.set)
    try:
        result = deploy(args.artifacts, args.bucket, args.application, args.environment, args.prefix, properties,
                        args.wait)
    except (RuntimeError, ValueError, FileNotFoundError) as exc:
        sys.exit(f"deploy failed: {exc}")
    print(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
