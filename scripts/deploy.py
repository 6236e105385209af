"""Deploy to AWS Elastic Beanstalk in one command: artifacts to S3, a code-only bundle, a version, the environment.

    python scripts/deploy.py --artifacts data/shop/index/current --bucket my-shop-search \
        --application visual-search --environment visual-search-prod

    python scripts/deploy.py --artifacts data/shop/index/current --bucket my-shop-search --artifacts-only

Steps: (1) upload the index folder to s3://BUCKET/PREFIX/<version>/ (files whose sha256 is already there are
skipped) and point s3://BUCKET/PREFIX/CURRENT at it: every instance picks the new version up by itself within
RELOAD_CHECK_S, and `--artifacts-only` stops here; (2) zip the service's code (the service and the runtime
layer it imports: never the pipeline, data or models); (3) upload the zip and create an application version
(none when this code was deployed before) and wait until Beanstalk has validated it; (4) update the
environment, or create it: the newest Python 3.11 platform, an instance profile and a service role (created
with AWS's managed policies when absent), the instance type; load balancing, autoscaling, IMDSv2 and the
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
FIXED_TIME = (2020, 1, 1, 0, 0, 0)

PLATFORM_BRANCH = "Python 3.11 running on 64bit Amazon Linux 2023"
# 2 workers serving the default extractor (BiT-M R50x3: 3.33 GiB measured) plus a 1M-product index (2.6 GiB): README.
INSTANCE_TYPE = "t3.large"
INSTANCE_ROLE = "aws-elasticbeanstalk-ec2-role"  # the names Beanstalk's console uses
SERVICE_ROLE = "aws-elasticbeanstalk-service-role"
INSTANCE_POLICIES = ("arn:aws:iam::aws:policy/AWSElasticBeanstalkWebTier",)
SERVICE_POLICIES = ("arn:aws:iam::aws:policy/service-role/AWSElasticBeanstalkEnhancedHealth",
                    "arn:aws:iam::aws:policy/AWSElasticBeanstalkManagedUpdatesCustomerRolePolicy")
ENV_NAMESPACE = "aws:elasticbeanstalk:application:environment"
EVENTS_SHOWN = 15


class DeployError(RuntimeError):
    """A deployment step failed; the message says what happened and what to do."""


def upload_artifacts(folder: Path, bucket: str, prefix: str, client=None) -> dict:
    """Upload a verified index folder to s3://bucket/prefix/<version>/, skipping files already there, then point
    s3://bucket/prefix/CURRENT at it (last, so no instance sees a half-uploaded version).

    Returns:
        Counts of uploaded and skipped files, the version, and the S3 URI the service's ARTIFACTS should name.
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
    return [{"Namespace": ENV_NAMESPACE, "OptionName": k, "Value": v} for k, v in values.items()]


def newest_platform(eb, branch: str = PLATFORM_BRANCH) -> str:
    """Return the ARN of the newest Ready platform version on `branch` (AWS retires old ones)."""
    filters = [{"Type": "PlatformBranchName", "Operator": "=", "Values": [branch]},
               {"Type": "PlatformStatus", "Operator": "=", "Values": ["Ready"]}]
    found = []
    for page in eb.get_paginator("list_platform_versions").paginate(Filters=filters):
        found += page["PlatformSummaryList"]
    if not found:
        raise DeployError(f"no Ready platform version on the branch {branch!r} in this region; "
                          "pass one with --platform (aws elasticbeanstalk list-platform-versions lists them)")

    def key(summary: dict) -> tuple[int, ...]:
        return tuple(int(part) for part in summary["PlatformVersion"].split(".") if part.isdigit())

    return max(found, key=key)["PlatformArn"]


def ensure_role(iam, role: str, service: str, policies: tuple[str, ...], inline: dict | None = None,
                profile: bool = False, external_id: str | None = None) -> str:
    """Return the role's name, creating it (trusting `service`, with `policies`) and its instance profile if absent."""
    statement = {"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}
    if external_id:
        statement["Condition"] = {"StringEquals": {"sts:ExternalId": external_id}}
    try:
        iam.get_role(RoleName=role)
    except iam.exceptions.NoSuchEntityException:
        iam.create_role(RoleName=role, AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17",
                                                                            "Statement": [statement]}),
                        Description="Created by visual-search's deploy.py for Elastic Beanstalk")
        print(f"deploy: created IAM role {role}", flush=True)
    for arn in policies:
        iam.attach_role_policy(RoleName=role, PolicyArn=arn)  # idempotent
    if inline:
        iam.put_role_policy(RoleName=role, PolicyName="visual-search-artifacts", PolicyDocument=json.dumps(inline))
    if profile:
        try:
            existing = iam.get_instance_profile(InstanceProfileName=role)["InstanceProfile"]
        except iam.exceptions.NoSuchEntityException:
            existing = iam.create_instance_profile(InstanceProfileName=role)["InstanceProfile"]
        if role not in {r["RoleName"] for r in existing.get("Roles", [])}:
            iam.add_role_to_instance_profile(InstanceProfileName=role, RoleName=role)
    return role


def bucket_read_policy(bucket: str) -> dict:
    """Read access to the artifacts bucket: what an instance needs to fetch and watch its index."""
    return {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": f"arn:aws:s3:::{bucket}/*"},
        {"Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": f"arn:aws:s3:::{bucket}"}]}


def creation_settings(instance_profile: str, service_role: str, instance_type: str) -> list[dict]:
    """Settings only a new environment gets from the command line (the rest is in .ebextensions/)."""
    return [{"Namespace": "aws:autoscaling:launchconfiguration", "OptionName": "IamInstanceProfile",
             "Value": instance_profile},
            {"Namespace": "aws:elasticbeanstalk:environment", "OptionName": "ServiceRole", "Value": service_role},
            {"Namespace": "aws:ec2:instances", "OptionName": "InstanceTypes", "Value": instance_type}]


def ensure_version(eb, s3, bucket: str, application: str, bundle: bytes, label: str, wait_s: float,
                   poll_s: float) -> bool:
    """Create the application (if new) and version `label` from `bundle` unless it exists; return True if created."""
    if not eb.describe_applications(ApplicationNames=[application])["Applications"]:
        eb.create_application(ApplicationName=application, Description="Visual product search")
    if eb.describe_application_versions(ApplicationName=application, VersionLabels=[label])["ApplicationVersions"]:
        return False
    key = f"bundles/{label}.zip"
    s3.put_object(Bucket=bucket, Key=key, Body=bundle)
    eb.create_application_version(ApplicationName=application, VersionLabel=label, Process=True,
                                  SourceBundle={"S3Bucket": bucket, "S3Key": key})
    deadline = time.monotonic() + wait_s
    while True:
        version = eb.describe_application_versions(ApplicationName=application,
                                                   VersionLabels=[label])["ApplicationVersions"][0]
        if version["Status"] == "PROCESSED":
            return True
        if version["Status"] == "FAILED":
            raise DeployError(f"Beanstalk could not process the bundle {label} (its .ebextensions/ or Procfile); "
                              "see the application's events in the console")
        if time.monotonic() > deadline:
            raise DeployError(f"the application version {label} was still {version['Status']} after {wait_s:.0f} s")
        time.sleep(poll_s)


def live_environment(eb, application: str, environment: str) -> dict | None:
    """Return the environment's description, or None when it does not exist (or is terminated)."""
    found = eb.describe_environments(ApplicationName=application, EnvironmentNames=[environment],
                                     IncludeDeleted=False)["Environments"]
    live = [e for e in found if e["Status"] not in ("Terminated", "Terminating")]
    return live[0] if live else None


def current_properties(eb, application: str, environment: str) -> dict[str, str]:
    """The environment properties an environment runs with now."""
    settings = eb.describe_configuration_settings(ApplicationName=application,
                                                  EnvironmentName=environment)["ConfigurationSettings"][0]
    return {o["OptionName"]: o.get("Value", "") for o in settings.get("OptionSettings", [])
            if o["Namespace"] == ENV_NAMESPACE}


def recent_events(eb, environment: str, since: dt.datetime) -> list[str]:
    """The environment's events since `since`, oldest first, one line each."""
    events = eb.describe_events(EnvironmentName=environment, StartTime=since, MaxRecords=EVENTS_SHOWN)["Events"]
    return [f"  {e['EventDate']:%H:%M:%S} {e['Severity']}: {e['Message']}" for e in reversed(events)]


def wait_until_healthy(eb, environment: str, label: str | None, wait_s: float, poll_s: float,
                       since: dt.datetime | None = None) -> dict:
    """Poll until Beanstalk says Ready and Green on version `label`, then check the service's /health.

    Raises:
        DeployError: the environment went Red or did not get there within `wait_s`; the message holds its events.
    """
    since = since or dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    deadline = time.monotonic() + wait_s
    state: dict = {}
    while True:
        env = eb.describe_environments(EnvironmentNames=[environment])["Environments"][0]
        state = {"status": env["Status"], "health": env.get("Health"), "version_label": env.get("VersionLabel"),
                 "cname": env.get("CNAME", "")}
        print(f"deploy: {environment}: {state['status']}, health {state['health']}, version "
              f"{state['version_label']}", flush=True)
        on_version = label is None or state["version_label"] == label
        if state["status"] == "Ready" and state["health"] == "Green" and on_version:
            if state["cname"]:
                url = f"http://{state['cname']}/health"
                try:
                    with urllib.request.urlopen(url, timeout=30) as response:
                        state["service"] = json.loads(response.read())
                except (OSError, ValueError) as exc:
                    raise DeployError(f"{environment} is Ready and Green but {url} failed ({exc}); a new environment's "
                                      f"DNS name can take a minute to resolve: try `curl {url}`") from None
            return state
        if state["status"] == "Ready" and state["health"] == "Red":
            problem = "went Red"
            break
        if time.monotonic() > deadline:
            problem = f"did not become Ready and Green within {wait_s:.0f} s"
            break
        time.sleep(poll_s)
    events = recent_events(eb, environment, since)
    raise DeployError(f"{environment} {problem} (last: {state['status']}, health {state['health']}, version "
                      f"{state['version_label']}). Recent events:\n" + "\n".join(events or ["  (none)"]) +
                      "\nFix what the events name, or roll back with: aws elasticbeanstalk update-environment "
                      f"--environment-name {environment} --version-label <previous label>; the instances' logs: aws "
                      f"elasticbeanstalk request-environment-info --environment-name {environment} --info-type tail")


def deploy(artifacts_dir: Path, bucket: str, application: str, environment: str, prefix: str = "artifacts",
           properties: dict[str, str] | None = None, wait_s: float = 1800, poll_s: float = 10,
           platform: str | None = None, instance_type: str = INSTANCE_TYPE, instance_profile: str | None = None,
           service_role: str | None = None, artifacts_only: bool = False, clients: dict | None = None) -> dict:
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

    Raises:
        DeployError: a step failed; the message says what to do.
    """
    import boto3

    clients = clients or {}
    s3 = clients.get("s3") or storage.s3_client()
    result: dict = {"artifacts": upload_artifacts(artifacts_dir, bucket, prefix, s3)}
    if artifacts_only:
        print(f"deploy: s3://{bucket}/{prefix.strip('/')}/{S3_POINTER} -> {result['artifacts']['version']}; "
              "every instance loads it within RELOAD_CHECK_S (see /health)", flush=True)
        return result
    eb = clients.get("elasticbeanstalk") or boto3.client("elasticbeanstalk")
    started = dt.datetime.now(dt.UTC)
    bundle, digest = build_bundle()
    label = f"{application}-{digest}"
    created = ensure_version(eb, s3, bucket, application, bundle, label, wait_s, poll_s)
    result["bundle"] = {"version_label": label, "bytes": len(bundle), "new_version": created}
    properties = {"ARTIFACTS": result["artifacts"]["artifacts"], **(properties or {})}
    settings = environment_settings(properties.pop("ARTIFACTS"), properties)
    existing = live_environment(eb, application, environment)
    if existing is None:
        iam = clients.get("iam") or boto3.client("iam")
        profile = instance_profile or ensure_role(iam, INSTANCE_ROLE, "ec2.amazonaws.com", INSTANCE_POLICIES,
                                                  inline=bucket_read_policy(bucket), profile=True)
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


def wait_until_ready(eb, environment: str, wait_s: float, poll_s: float) -> None:
    """Wait until an environment is no longer launching or updating."""
    deadline = time.monotonic() + wait_s
    while eb.describe_environments(EnvironmentNames=[environment])["Environments"][0]["Status"] != "Ready":
        if time.monotonic() > deadline:
            raise DeployError(f"{environment} stayed busy for {wait_s:.0f} s; try again when it is Ready")
        time.sleep(poll_s)


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
    parser.add_argument("--platform", help="platform ARN of a new environment (default: the newest "
                                           f"'{PLATFORM_BRANCH}')")
    parser.add_argument("--instance-type", default=INSTANCE_TYPE, help=f"of a new environment (default "
                                                                       f"{INSTANCE_TYPE}; see README)")
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
    properties = dict(item.split("=", 1) for item in args.set)
    try:
        result = deploy(args.artifacts, args.bucket, args.application, args.environment, args.prefix, properties,
                        args.wait, platform=args.platform, instance_type=args.instance_type,
                        instance_profile=args.instance_profile, service_role=args.service_role,
                        artifacts_only=args.artifacts_only)
    except (DeployError, ValueError, FileNotFoundError, artifacts.ArtifactError) as exc:
        sys.exit(f"deploy failed: {exc}")
    print(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
