"""The Elastic Beanstalk side of a deploy: platform, roles, application version, environment state and events.

Every call here goes through a boto3 client passed in, so tests can check each one with botocore's Stubber.
"""

from __future__ import annotations

import datetime as dt
import json
import urllib.request

from botocore.exceptions import WaiterError

from runtime import versions
from scripts import waiters

PLATFORM_BRANCH = "Python 3.11 running on 64bit Amazon Linux 2023"
# 2 workers serving the default extractor plus a 1M-product index need more than 4 GiB (docs/deployment.md).
INSTANCE_TYPE = "t3.large"
INSTANCE_ROLE = "aws-elasticbeanstalk-ec2-role"  # the names Beanstalk's console uses
SERVICE_ROLE = "aws-elasticbeanstalk-service-role"
INSTANCE_POLICIES = ("arn:aws:iam::aws:policy/AWSElasticBeanstalkWebTier",)
SERVICE_POLICIES = ("arn:aws:iam::aws:policy/service-role/AWSElasticBeanstalkEnhancedHealth",
                    "arn:aws:iam::aws:policy/AWSElasticBeanstalkManagedUpdatesCustomerRolePolicy")
ENV_NAMESPACE = "aws:elasticbeanstalk:application:environment"
EVENTS_SHOWN = 15
EVENTS_PREFIX = "analytics"  # where instances ship search analytics in the artifacts bucket (EVENTS_TARGET)


class DeployError(RuntimeError):
    """A deployment step failed; the message says what happened and what to do."""


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


def instance_bucket_policy(bucket: str, prefix: str) -> dict:
    """What an instance may do in the artifacts bucket: read it (fetch and watch its index), write the prefix's
    pointer, which an admin reload naming a version moves (`POST /api/admin/reload`), and add analytics event files
    under EVENTS_PREFIX (`service.events`)."""
    return {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": f"arn:aws:s3:::{bucket}/*"},
        {"Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": f"arn:aws:s3:::{bucket}"},
        {"Effect": "Allow", "Action": ["s3:PutObject"],
         "Resource": f"arn:aws:s3:::{bucket}/{versions.pointer_key(prefix)}"},
        {"Effect": "Allow", "Action": ["s3:PutObject"], "Resource": f"arn:aws:s3:::{bucket}/{EVENTS_PREFIX}/*"}]}


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
    acceptors = [waiters.path_is("ApplicationVersions[0].Status", "PROCESSED", "success"),
                 waiters.path_is("ApplicationVersions[0].Status", "FAILED", "failure")]
    try:
        waiters.wait(eb, "DescribeApplicationVersions", acceptors, wait_s, poll_s, ApplicationName=application,
                     VersionLabels=[label])
    except WaiterError as exc:
        status = (exc.last_response.get("ApplicationVersions") or [{}])[0].get("Status")
        if status == "FAILED":
            raise DeployError(f"Beanstalk could not process the bundle {label} (its .ebextensions/ or Procfile); "
                              "see the application's events in the console") from None
        raise DeployError(f"the application version {label} was still {status} after {wait_s:.0f} s") from None
    return True


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
    """Wait (a boto3 waiter, printing each poll) until Beanstalk says Ready and Green on version `label`, then check
    the service's /health.

    Raises:
        DeployError: the environment went Red or did not get there within `wait_s`; the message holds its events.
    """
    since = since or dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    state: dict = {}

    def show(parsed: dict) -> None:
        env = (parsed.get("Environments") or [{}])[0]
        state.update({"status": env.get("Status"), "health": env.get("Health"),
                      "version_label": env.get("VersionLabel"), "cname": env.get("CNAME", "")})
        print(f"deploy: {environment}: {state['status']}, health {state['health']}, version "
              f"{state['version_label']}", flush=True)

    ready_green = "Environments[0].Status == 'Ready' && Environments[0].Health == 'Green'"
    if label is not None:
        ready_green += f" && Environments[0].VersionLabel == {waiters.literal(label)}"
    acceptors = [waiters.path_is(ready_green, True, "success"),
                 waiters.path_is("Environments[0].Status == 'Ready' && Environments[0].Health == 'Red'", True,
                                 "failure")]
    try:
        waiters.wait(eb, "DescribeEnvironments", acceptors, wait_s, poll_s, on_poll=show,
                     EnvironmentNames=[environment])
        problem = None
    except WaiterError:
        problem = "went Red" if state.get("health") == "Red" and state.get("status") == "Ready" else \
            f"did not become Ready and Green within {wait_s:.0f} s"
    if problem is None:
        if state["cname"]:
            url = f"http://{state['cname']}/health"
            try:
                with urllib.request.urlopen(url, timeout=30) as response:
                    state["service"] = json.loads(response.read())
            except (OSError, ValueError) as exc:
                raise DeployError(f"{environment} is Ready and Green but {url} failed ({exc}); a new environment's "
                                  f"DNS name can take a minute to resolve: try `curl {url}`") from None
        return state
    events = recent_events(eb, environment, since)
    raise DeployError(f"{environment} {problem} (last: {state.get('status')}, health {state.get('health')}, version "
                      f"{state.get('version_label')}). Recent events:\n" + "\n".join(events or ["  (none)"]) +
                      "\nFix what the events name, or roll back with: aws elasticbeanstalk update-environment "
                      f"--environment-name {environment} --version-label <previous label>; the instances' logs: aws "
                      f"elasticbeanstalk request-environment-info --environment-name {environment} --info-type tail")


def wait_until_ready(eb, environment: str, wait_s: float, poll_s: float) -> None:
    """Wait until an environment is no longer launching or updating (botocore's `environment_updated` waiter)."""
    try:
        eb.get_waiter("environment_updated").wait(EnvironmentNames=[environment],
                                                  WaiterConfig=waiters.config(wait_s, poll_s))
    except WaiterError:
        raise DeployError(f"{environment} stayed busy for {wait_s:.0f} s; try again when it is Ready") from None
