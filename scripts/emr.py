"""Run the vectorize stage on Amazon EMR (Spark on YARN) in one command, on a data dir in S3.

    python -m scripts.emr --data-dir s3://shop-data/catalogs/spring --code s3://shop-data/emr-code \
        --core-nodes 4 --instance-type m7i.2xlarge                 # a new cluster, ended when the step ends
    python -m scripts.emr --data-dir s3://shop-data/catalogs/spring --code s3://shop-data/emr-code \
        --cluster-id j-2AXXXXXXGAPLF                               # a cluster this command created before

Steps: (1) upload the project's code (runtime/, pipeline/, pyproject.toml, the requirements files) as one
archive named by its content, a bootstrap script that installs it with Python 3.11 on every node, and the
step's entry file, under `--code`; (2) with `--cluster-id`, add the vectorize step to that cluster (it must
have been created with this bootstrap action, e.g. by this command with `--keep-alive`); otherwise create a
cluster (EMR 7, Spark, the bootstrap action, PYSPARK_PYTHON set to Python 3.11) whose one step is vectorize;
(3) wait for the step and print its outcome; a failed step raises with EMR's reason and log file.
The step runs `spark-submit` of `python -m pipeline vectorize --engine spark --data-dir DATA`: shards that
are already current are kept, so a failed or cancelled step can simply be run again.

IAM: EMR's default roles (`aws emr create-default-roles`: EMR_DefaultRole for the service, EMR_EC2_DefaultRole
as the nodes' instance profile); the instance profile must read the code prefix and read and write the data dir.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import zipfile
from pathlib import Path

from botocore.exceptions import WaiterError

from runtime import storage
from scripts import waiters

ROOT = Path(__file__).resolve().parents[1]
RELEASE = "emr-7.13.0"  # Spark 3.5.6: requirements-spark.txt pins the same line
INSTANCE_TYPE = "m7i.2xlarge"
SERVICE_ROLE = "EMR_DefaultRole"
INSTANCE_PROFILE = "EMR_EC2_DefaultRole"
PYTHON = "/usr/bin/python3.11"
CODE_FILES = ("pyproject.toml", "README.md", "requirements.txt", "requirements-pipeline.txt", "requirements-spark.txt")
CODE_DIRS = ("runtime", "pipeline")
TERMINAL = {"COMPLETED", "CANCELLED", "FAILED", "INTERRUPTED"}
ENTRY = "from pipeline.vectorize import main\n\nmain()\n"
BOOTSTRAP = """#!/bin/bash
# Installs the visual-search pipeline with Python 3.11 on an EMR node (a bootstrap action; args: the code archive).
set -euo pipefail
sudo dnf install -y -q python3.11 python3.11-pip
aws s3 cp "$1" /tmp/visual-search.zip
rm -rf /tmp/visual-search && mkdir -p /tmp/visual-search && cd /tmp/visual-search && unzip -q /tmp/visual-search.zip
sudo {python} -m pip install --quiet ".[pipeline]"
"""


class EmrError(RuntimeError):
    """The EMR step failed, was cancelled, or did not end in time; the message says why and where the logs are."""


def code_archive() -> bytes:
    """Zip the pipeline's code and requirements (same bytes for the same code: fixed times, sorted names)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        files = [ROOT / name for name in CODE_FILES]
        for folder in CODE_DIRS:
            files += sorted(p for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)
        for path in files:
            info = zipfile.ZipInfo(path.relative_to(ROOT).as_posix(), (2020, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes())
    return buffer.getvalue()


def upload_code(code: str, s3=None) -> dict[str, str]:
    """Upload the archive, the bootstrap script and the step's entry file under `code`; return their s3:// URIs."""
    s3 = s3 or storage.s3_client()
    archive = code_archive()
    bucket, prefix = storage.split_s3(code.rstrip("/"))
    digest = hashlib.sha256(archive).hexdigest()[:16]
    base = f"{prefix}/{digest}" if prefix else digest
    objects = {"archive": ("visual-search.zip", archive),
               "bootstrap": ("bootstrap.sh", BOOTSTRAP.format(python=PYTHON).encode()),
               "entry": ("vectorize_entry.py", ENTRY.encode())}
    uris = {}
    for role, (name, body) in objects.items():
        s3.put_object(Bucket=bucket, Key=f"{base}/{name}", Body=body)
        uris[role] = f"s3://{bucket}/{base}/{name}"
    return uris


def vectorize_step(data_dir: str, entry: str, shard_rows: int | None = None) -> dict:
    """The EMR step: spark-submit of the vectorize stage, engine spark, on the cluster's YARN."""
    args = ["spark-submit", "--deploy-mode", "cluster", "--master", "yarn",
            "--conf", f"spark.yarn.appMasterEnv.PYSPARK_PYTHON={PYTHON}",
            "--conf", f"spark.executorEnv.PYSPARK_PYTHON={PYTHON}",
            entry, "--data-dir", data_dir, "--engine", "spark"]
    if shard_rows:
        args += ["--shard-rows", str(shard_rows)]
    return {"Name": f"visual-search vectorize {data_dir}", "ActionOnFailure": "CONTINUE",
            "HadoopJarStep": {"Jar": "command-runner.jar", "Args": args}}


def cluster_request(name: str, code: dict[str, str], step: dict, core_nodes: int, instance_type: str,
                    release: str, log_uri: str | None, subnet: str | None, keep_alive: bool,
                    service_role: str = SERVICE_ROLE, instance_profile: str = INSTANCE_PROFILE) -> dict:
    """The RunJobFlow request of a new cluster that installs the project on every node and runs `step`."""
    instances = {"InstanceGroups": [
        {"Name": "primary", "InstanceRole": "MASTER", "InstanceType": instance_type, "InstanceCount": 1},
        {"Name": "core", "InstanceRole": "CORE", "InstanceType": instance_type, "InstanceCount": core_nodes}],
        "KeepJobFlowAliveWhenNoSteps": keep_alive}
    if subnet:
        instances["Ec2SubnetId"] = subnet
    request = {
        "Name": name, "ReleaseLabel": release, "Applications": [{"Name": "Spark"}], "Instances": instances,
        "BootstrapActions": [{"Name": "install visual-search",
                              "ScriptBootstrapAction": {"Path": code["bootstrap"], "Args": [code["archive"]]}}],
        "Configurations": [{"Classification": "spark-env", "Configurations": [
            {"Classification": "export", "Properties": {"PYSPARK_PYTHON": PYTHON}}]},
            {"Classification": "spark-defaults", "Properties": {"spark.python.worker.reuse": "true"}}],
        "Steps": [step], "JobFlowRole": instance_profile, "ServiceRole": service_role, "VisibleToAllUsers": True,
        "Tags": [{"Key": "application", "Value": "visual-search"}]}
    if log_uri:
        request["LogUri"] = log_uri
    return request


def wait_for_step(emr, cluster_id: str, step_id: str, wait_s: float, poll_s: float) -> dict:
    """Wait for a step to end (a boto3 waiter: botocore's `step_complete` with INTERRUPTED a failure too); return
    its final status, or raise EmrError on failure or timeout."""
    failed = sorted(TERMINAL - {"COMPLETED"})
    acceptors = [waiters.path_is("Step.Status.State", "COMPLETED", "success"),
                 *(waiters.path_is("Step.Status.State", state, "failure") for state in failed)]
    try:
        return waiters.wait(emr, "DescribeStep", acceptors, wait_s, poll_s, ClusterId=cluster_id,
                            StepId=step_id)["Step"]["Status"]
    except WaiterError as exc:
        status = exc.last_response.get("Step", {}).get("Status", {})
        if status.get("State") in TERMINAL:
            details = status.get("FailureDetails", {})
            raise EmrError(f"step {step_id} on {cluster_id} ended {status['State']}: "
                           f"{details.get('Reason') or status.get('StateChangeReason', {}).get('Message', 'no reason')}"
                           f"{'; ' + details['Message'] if details.get('Message') else ''}"
                           f"{'; logs: ' + details['LogFile'] if details.get('LogFile') else ''}. "
                           "Finished shards are kept: run the same command again to resume.") from None
        raise EmrError(f"step {step_id} on {cluster_id} still {status.get('State')} after {wait_s:.0f} s; follow it "
                       f"with `aws emr describe-step --cluster-id {cluster_id} --step-id {step_id}`") from None


def run(data_dir: str, code: str, cluster_id: str | None = None, core_nodes: int = 2,
        instance_type: str = INSTANCE_TYPE, release: str = RELEASE, log_uri: str | None = None,
        subnet: str | None = None, keep_alive: bool = False, shard_rows: int | None = None,
        wait_s: float = 6 * 3600, poll_s: float = 30, clients: tuple | None = None) -> dict:
    """Upload the code, start the vectorize step (on `cluster_id` or a new cluster) and wait for it.

    Returns:
        {"cluster_id", "step_id", "state", "code"}.

    Raises:
        ValueError: the data dir or code location is not an s3:// URI.
        EmrError: the step failed, was cancelled, or outlasted `wait_s`.
    """
    for name, uri in (("--data-dir", data_dir), ("--code", code)):
        if not uri.startswith("s3://"):
            raise ValueError(f"{name} must be an s3:// URI (EMR nodes read it), got {uri!r}")
    if core_nodes < 1:
        raise ValueError(f"--core-nodes must be at least 1, got {core_nodes}")
    import boto3

    emr, s3 = clients or (boto3.client("emr"), storage.s3_client())
    uris = upload_code(code, s3)
    step = vectorize_step(data_dir, uris["entry"], shard_rows)
    if cluster_id:
        step_id = emr.add_job_flow_steps(JobFlowId=cluster_id, Steps=[step])["StepIds"][0]
    else:
        request = cluster_request(f"visual-search vectorize {data_dir}", uris, step, core_nodes, instance_type,
                                  release, log_uri, subnet, keep_alive)
        cluster_id = emr.run_job_flow(**request)["JobFlowId"]
        step_id = emr.list_steps(ClusterId=cluster_id)["Steps"][0]["Id"]
    print(f"EMR: step {step_id} on cluster {cluster_id}; waiting (aws emr describe-step --cluster-id {cluster_id} "
          f"--step-id {step_id})", flush=True)
    status = wait_for_step(emr, cluster_id, step_id, wait_s, poll_s)
    return {"cluster_id": cluster_id, "step_id": step_id, "state": status["State"], "code": uris}


def main(argv: list[str] | None = None) -> None:
    """Run the command line (`python -m scripts.emr --help`)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="s3://bucket/prefix of a data dir (acquire and finetune run)")
    parser.add_argument("--code", required=True, help="s3://bucket/prefix where the code and bootstrap go")
    parser.add_argument("--cluster-id", default=None, help="run on this cluster (created with this bootstrap)")
    parser.add_argument("--core-nodes", type=int, default=2, help="core nodes of a new cluster (default 2)")
    parser.add_argument("--instance-type", default=INSTANCE_TYPE, help=f"node type (default {INSTANCE_TYPE})")
    parser.add_argument("--release", default=RELEASE, help=f"EMR release (default {RELEASE})")
    parser.add_argument("--log-uri", default=None, help="s3:// folder for the cluster's logs")
    parser.add_argument("--subnet", default=None, help="EC2 subnet id of a new cluster")
    parser.add_argument("--keep-alive", action="store_true", help="keep a new cluster running after the step")
    parser.add_argument("--shard-rows", type=int, default=None, help="catalog rows per shard, i.e. per Spark task")
    args = parser.parse_args(argv)
    try:
        result = run(args.data_dir, args.code, args.cluster_id, args.core_nodes, args.instance_type, args.release,
                     args.log_uri, args.subnet, args.keep_alive, args.shard_rows)
    except (ValueError, EmrError) as error:
        sys.exit(f"error: {error}")
    print(f"EMR: step {result['step_id']} {result['state']}; embeddings in {args.data_dir}/embeddings/")


if __name__ == "__main__":
    main()
