"""Deploy to AWS Elastic Beanstalk in one command: artifacts to S3, a code-only bundle, a version, the environment.

    python scripts/deploy.py --artifacts data/shop/index/current --bucket my-shop-search \
        --application visual-search --environment visual-search-prod

    python scripts/deploy.py --artifacts data/shop/index/current --bucket my-shop-search --artifacts-only

Steps: (1) upload the index version to s3://BUCKET/PREFIX (each file stored once by content, under blobs/; the
version is its manifest) and point s3://BUCKET/PREFIX/CURRENT at it, only if CURRENT still names a version this one
was built on (else it stops and says what moved: another publisher's work is never undone silently): every instance
picks the new version up by itself within RELOAD_CHECK_S, and `--artifacts-only` stops here; (2) zip the service's
code (the service and the runtime layer it imports: never the pipeline, data or models); (3) upload the zip and
create an application version (none when this code was deployed before) and wait until Beanstalk has validated it;
(4) update the environment, or create it: the newest Python 3.11 platform, an instance profile and a service role
(created with AWS's managed policies when absent), the instance type; load balancing, autoscaling, IMDSv2 and the
rolling deployment policy come from .ebextensions/; (5) wait until Beanstalk reports it Ready and Green on this
version, then check /health. A failure prints the environment's recent events.

AWS credentials and region come from the usual boto3 sources; AWS_ENDPOINT_URL points boto3 at another server.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import io
import json
import sys
import zipfile
from pathlib import Path

from runtime import artifacts, extractor, storage, versions
from runtime.layout import EXTRACTOR_DIR
from scripts.beanstalk import (
    ENV_NAMESPACE,
    EVENTS_PREFIX,
    INSTANCE_POLICIES,
    INSTANCE_ROLE,
    INSTANCE_TYPE,
    PLATFORM_BRANCH,
    SERVICE_POLICIES,
    SERVICE_ROLE,
    DeployError,
    creation_settings,
    current_properties,
    ensure_role,
    ensure_version,
    instance_bucket_policy,
    live_environment,
    newest_platform,
    wait_until_healthy,
    wait_until_ready,
)
from scripts.publish import prune_s3, upload_artifacts

__all__ = ["DeployError", "build_bundle", "deploy", "main", "prune_s3", "upload_artifacts"]

ROOT = Path(__file__).resolve().parents[1]
# The service and the runtime layer it imports; never the pipeline's stages, data or models.
BUNDLE_FILES = ("application.py", "Procfile", "gunicorn.conf.py", "requirements.txt")
BUNDLE_DIRS = ("runtime", "service", ".platform", ".ebextensions")
BUNDLE_SKIP = ("__pycache__", ".pyc")
TENSORFLOW_REQUIREMENTS = "requirements-tensorflow.txt"
FIXED_TIME = (2020, 1, 1, 0, 0, 0)



def build_bundle(root: Path = ROOT, tensorflow: bool = False) -> tuple[bytes, str]:
    """Zip the service's code deterministically; return (zip bytes, content hash for the version label).

    Args:
        root: the repository.
        tensorflow: append requirements-tensorflow.txt to the bundle's requirements.txt (an index whose extractor
            runs on TensorFlow); without it the instances install no TensorFlow.
    """
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
            if rel == "requirements.txt" and tensorflow:
                data += b"\n" + (root / TENSORFLOW_REQUIREMENTS).read_bytes()
            bundle.writestr(info, data)
            digest.update(rel.encode() + b"\0" + data)
    return buffer.getvalue(), digest.hexdigest()[:12]


def environment_settings(artifacts_uri: str, extra: dict[str, str]) -> list[dict]:
    """Beanstalk option settings that set the service's environment properties: ARTIFACTS, where the analytics
    events are shipped (EVENTS_TARGET, by default beside the artifacts in their bucket), and `extra`."""
    bucket, _ = storage.split_s3(artifacts_uri)
    values = {"ARTIFACTS": artifacts_uri, "EVENTS_TARGET": f"s3://{bucket}/{EVENTS_PREFIX}", **extra}
    return [{"Namespace": ENV_NAMESPACE, "OptionName": k, "Value": v} for k, v in values.items()]


def deploy(artifacts_dir: Path, bucket: str, application: str, environment: str, prefix: str = "artifacts",
           properties: dict[str, str] | None = None, wait_s: float = 1800, poll_s: float = 10,
           platform: str | None = None, instance_type: str = INSTANCE_TYPE, instance_profile: str | None = None,
           service_role: str | None = None, artifacts_only: bool = False, clients: dict | None = None,
           replace_current: bool = False) -> dict:
    """Run every deployment step and return what was done.

    Args:
        artifacts_dir: the index folder to publish (e.g. DATA/index/current).
        bucket: the S3 bucket for artifacts and code bundles.
        application: the Beanstalk application (created if absent).
        environment: the Beanstalk environment (created if absent).
        prefix: the key prefix of the artifacts; ARTIFACTS becomes s3://bucket/prefix.
        properties: more environment properties (ADMIN_TOKEN, IMAGE_BASE_URL, ...).
        wait_s: how long to wait for the version to be processed and the environment to be healthy.
        poll_s: seconds between polls.
        platform: a platform ARN for a new environment (default: the newest on PLATFORM_BRANCH).
        instance_type: the EC2 instance type of a new environment.
        instance_profile: an existing instance profile (default: INSTANCE_ROLE, created if absent).
        service_role: an existing service role (default: SERVICE_ROLE, created if absent).
        artifacts_only: publish the catalog and stop: no code, no environment change.
        clients: boto3 clients by service name ("s3", "elasticbeanstalk", "iam") instead of new ones.
        replace_current: move CURRENT even when it names a version this one was not built on.

    Raises:
        DeployError: a step failed; the message says what to do.
    """
    import boto3

    clients = clients or {}
    s3 = clients.get("s3") or storage.s3_client()
    result: dict = {"artifacts": upload_artifacts(artifacts_dir, bucket, prefix, s3, replace_current)}
    if artifacts_only:
        up = result["artifacts"]
        base = up.get("base")
        sent = f"{up['bytes']:,} bytes uploaded" + (
            f" (a delta; its base {base['version']}: {base['bytes']:,} bytes)" if base else "")
        print(f"deploy: s3://{bucket}/{versions.pointer_key(prefix)} -> {up['version']}, {sent}; "
              "every instance loads it within RELOAD_CHECK_S (see /health)", flush=True)
        return result
    eb = clients.get("elasticbeanstalk") or boto3.client("elasticbeanstalk")
    started = dt.datetime.now(dt.UTC)
    needs_tensorflow = not extractor.tensorflow_free(Path(artifacts_dir) / EXTRACTOR_DIR)
    bundle, digest = build_bundle(tensorflow=needs_tensorflow)
    label = f"{application}-{digest}"
    created = ensure_version(eb, s3, bucket, application, bundle, label, wait_s, poll_s)
    result["bundle"] = {"version_label": label, "bytes": len(bundle), "new_version": created,
                        "tensorflow": needs_tensorflow}
    properties = {"ARTIFACTS": result["artifacts"]["artifacts"], **(properties or {})}
    settings = environment_settings(properties.pop("ARTIFACTS"), properties)
    existing = live_environment(eb, application, environment)
    if existing is None:
        iam = clients.get("iam") or boto3.client("iam")
        profile = instance_profile or ensure_role(iam, INSTANCE_ROLE, "ec2.amazonaws.com", INSTANCE_POLICIES,
                                                  inline=instance_bucket_policy(bucket, prefix), profile=True)
        role = service_role or ensure_role(iam, SERVICE_ROLE, "elasticbeanstalk.amazonaws.com", SERVICE_POLICIES,
                                           external_id="elasticbeanstalk")
        arn = platform or newest_platform(eb)
        eb.create_environment(ApplicationName=application, EnvironmentName=environment, VersionLabel=label,
                              PlatformArn=arn, OptionSettings=settings + creation_settings(profile, role,
                                                                                            instance_type))
        result["environment"] = {"action": "created", "platform": arn, "instance_type": instance_type,
                                 "instance_profile": profile, "service_role": role}
    else:
        if existing["Status"] != "Ready":
            print(f"deploy: {environment} is {existing['Status']}; waiting for it to finish first", flush=True)
            wait_until_ready(eb, environment, wait_s, poll_s)
        wanted = {s["OptionName"]: s["Value"] for s in settings}
        have = current_properties(eb, application, environment)
        if existing.get("VersionLabel") == label and all(have.get(k) == v for k, v in wanted.items()):
            result["environment"] = {"action": "unchanged", "previous_version": label}
        else:
            eb.update_environment(ApplicationName=application, EnvironmentName=environment, VersionLabel=label,
                                  OptionSettings=settings)
            result["environment"] = {"action": "updated", "previous_version": existing.get("VersionLabel")}
    result["health"] = wait_until_healthy(eb, environment, label, wait_s, poll_s, since=started)
    return result


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and deploy."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, required=True, help="index folder (e.g. DATA/index/current)")
    parser.add_argument("--bucket", required=True, help="S3 bucket for artifacts and code bundles")
    parser.add_argument("--prefix", default="artifacts", help="key prefix of the artifacts (default artifacts)")
    parser.add_argument("--application", default="visual-search")
    parser.add_argument("--environment", default="visual-search-prod")
    parser.add_argument("--artifacts-only", action="store_true",
                        help="publish the catalog to S3 and stop (the instances load it by themselves)")
    parser.add_argument("--replace-current", action="store_true",
                        help="publish even when CURRENT names a version this one was not built on (another "
                             "publisher's, e.g. a `pipeline remove` elsewhere): its changes are undone")
    parser.add_argument("--prune", type=int, metavar="N",
                        help="after publishing, delete the S3 versions beyond the N newest (never the one served, nor "
                             "the base of a delta kept) and the stored files no kept version lists")
    parser.add_argument("--platform", help="platform ARN of a new environment (default: the newest "
                                           f"'{PLATFORM_BRANCH}')")
    parser.add_argument("--instance-type", default=INSTANCE_TYPE, help=f"of a new environment (default "
                                                                       f"{INSTANCE_TYPE}; see docs/deployment.md)")
    parser.add_argument("--instance-profile", help=f"an existing instance profile (default: {INSTANCE_ROLE}, "
                                                   "created with the web-tier policy and read access to the bucket)")
    parser.add_argument("--service-role", help=f"an existing service role (default: {SERVICE_ROLE}, created)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an environment property, e.g. --set ADMIN_TOKEN=... --set IMAGE_BASE_URL=...")
    parser.add_argument("--wait", type=float, default=1800, help="seconds to wait for a healthy environment")
    args = parser.parse_args(argv)
    bad = [item for item in args.set if "=" not in item]
    if bad:
        parser.error(f"--set takes KEY=VALUE, got {bad}")
    if args.prune is not None and args.prune < 1:
        parser.error(f"--prune keeps at least 1 version, got {args.prune}")
    properties = dict(item.split("=", 1) for item in args.set)
    try:
        result = deploy(args.artifacts, args.bucket, args.application, args.environment, args.prefix, properties,
                        args.wait, platform=args.platform, instance_type=args.instance_type,
                        instance_profile=args.instance_profile, service_role=args.service_role,
                        artifacts_only=args.artifacts_only, replace_current=args.replace_current)
        if args.prune:
            result["pruned"] = prune_s3(args.bucket, args.prefix, args.prune)
            print(f"deploy: pruned {len(result['pruned']['removed'])} old version(s) and "
                  f"{result['pruned']['blobs_removed']} stored file(s) from s3://{args.bucket}/{args.prefix}",
                  flush=True)
    except (DeployError, ValueError, FileNotFoundError, artifacts.ArtifactError) as exc:
        sys.exit(f"deploy failed: {exc}")
    print(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
