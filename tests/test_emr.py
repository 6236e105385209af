"""scripts/emr.py: every EMR call checked by botocore's Stubber against the real service model; code on moto's S3."""

from __future__ import annotations

import io
import zipfile

import boto3
import pytest
from botocore.stub import ANY, Stubber

from scripts import emr

DATA = "s3://shop-data/catalogs/spring"
CODE = "s3://shop-data/emr-code"


@pytest.fixture()
def clients(s3_server: str):
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="shop-data")
    client = boto3.client("emr", region_name="us-east-1")
    with Stubber(client) as stub:
        yield client, s3, stub
        stub.assert_no_pending_responses()


def step_status(stub: Stubber, cluster: str, step: str, states: list[str], failure: dict | None = None) -> None:
    for state in states:
        status = {"State": state}
        if state == "FAILED" and failure:
            status["FailureDetails"] = failure
        stub.add_response("describe_step", {"Step": {"Id": step, "Status": status}},
                          {"ClusterId": cluster, "StepId": step})


def test_a_new_cluster_installs_the_project_and_runs_the_vectorize_step(clients) -> None:
    client, s3, stub = clients
    captured = {}
    stub.add_response("run_job_flow", {"JobFlowId": "j-NEW"}, dict.fromkeys(
        ("Name", "ReleaseLabel", "Applications", "Instances", "BootstrapActions", "Configurations", "Steps",
         "JobFlowRole", "ServiceRole", "VisibleToAllUsers", "Tags", "LogUri"), ANY))
    stub.add_response("list_steps", {"Steps": [{"Id": "s-1", "Name": "vectorize"}]}, {"ClusterId": "j-NEW"})
    step_status(stub, "j-NEW", "s-1", ["PENDING", "RUNNING", "COMPLETED"])
    client.meta.events.register("provide-client-params.emr.RunJobFlow", lambda params, **_: captured.update(params))
    result = emr.run(DATA, CODE, core_nodes=3, log_uri="s3://shop-data/emr-logs", poll_s=0, clients=(client, s3))
    assert result["cluster_id"] == "j-NEW" and result["step_id"] == "s-1" and result["state"] == "COMPLETED"

    assert captured["ReleaseLabel"].startswith("emr-7.") and captured["Applications"] == [{"Name": "Spark"}]
    groups = {g["InstanceRole"]: g for g in captured["Instances"]["InstanceGroups"]}
    assert groups["CORE"]["InstanceCount"] == 3 and not captured["Instances"]["KeepJobFlowAliveWhenNoSteps"]
    bootstrap = captured["BootstrapActions"][0]["ScriptBootstrapAction"]
    assert bootstrap["Path"] == result["code"]["bootstrap"] and bootstrap["Args"] == [result["code"]["archive"]]
    args = captured["Steps"][0]["HadoopJarStep"]["Args"]
    assert args[:5] == ["spark-submit", "--deploy-mode", "cluster", "--master", "yarn"]
    assert args[-4:] == ["--data-dir", DATA, "--engine", "spark"] and result["code"]["entry"] in args
    assert {"Classification": "export", "Properties": {"PYSPARK_PYTHON": emr.PYTHON}} in \
        captured["Configurations"][0]["Configurations"]

    # What the bootstrap installs is the project: its archive holds the pipeline, not the service or tests.
    bucket, key = result["code"]["archive"][5:].split("/", 1)
    names = zipfile.ZipFile(io.BytesIO(s3.get_object(Bucket=bucket, Key=key)["Body"].read())).namelist()
    assert {"pipeline/vectorizing/spark_engine.py", "runtime/extractor.py", "pyproject.toml"} <= set(names)
    assert not any(n.startswith(("service/", "tests/")) for n in names)
    script = s3.get_object(Bucket=bucket, Key=result["code"]["bootstrap"].split("/", 3)[3])["Body"].read().decode()
    assert "python3.11" in script and '.[pipeline]' in script
    entry = s3.get_object(Bucket=bucket, Key=result["code"]["entry"].split("/", 3)[3])["Body"].read().decode()
    assert "from pipeline.vectorize import main" in entry


def test_an_existing_cluster_gets_the_step_and_the_same_code_is_not_renamed(clients) -> None:
    client, s3, stub = clients
    stub.add_response("add_job_flow_steps", {"StepIds": ["s-2"]}, {"JobFlowId": "j-OLD", "Steps": [ANY]})
    step_status(stub, "j-OLD", "s-2", ["COMPLETED"])
    first = emr.run(DATA, CODE, cluster_id="j-OLD", shard_rows=512, poll_s=0, clients=(client, s3))
    assert first["cluster_id"] == "j-OLD" and first["state"] == "COMPLETED"
    assert emr.upload_code(CODE, s3) == first["code"]  # the archive is named by its content


def test_a_failed_step_says_why_where_the_logs_are_and_how_to_resume(clients) -> None:
    client, s3, stub = clients
    stub.add_response("add_job_flow_steps", {"StepIds": ["s-3"]}, {"JobFlowId": "j-OLD", "Steps": [ANY]})
    step_status(stub, "j-OLD", "s-3", ["RUNNING", "FAILED"], failure={
        "Reason": "Spark job failed", "Message": "ModuleNotFoundError: No module named 'pipeline'",
        "LogFile": "s3://shop-data/emr-logs/j-OLD/steps/s-3/stderr.gz"})
    with pytest.raises(emr.EmrError, match=r"FAILED: Spark job failed; ModuleNotFoundError.*stderr.gz.*run the same "
                                           r"command again"):
        emr.run(DATA, CODE, cluster_id="j-OLD", poll_s=0, clients=(client, s3))


def test_an_interrupted_step_ends_the_wait_at_once(clients) -> None:
    client, s3, stub = clients
    stub.add_response("add_job_flow_steps", {"StepIds": ["s-4"]}, {"JobFlowId": "j-OLD", "Steps": [ANY]})
    step_status(stub, "j-OLD", "s-4", ["RUNNING", "INTERRUPTED"])  # botocore's step_complete would poll on
    with pytest.raises(emr.EmrError, match="ended INTERRUPTED"):
        emr.run(DATA, CODE, cluster_id="j-OLD", poll_s=0, wait_s=60, clients=(client, s3))
    stub.assert_no_pending_responses()


@pytest.mark.parametrize("data_dir, code, message", [
    ("data/shop", CODE, "--data-dir must be an s3:// URI"),
    (DATA, "/tmp/code", "--code must be an s3:// URI"),
])
def test_local_paths_are_refused_before_any_call(data_dir: str, code: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        emr.run(data_dir, code, clients=(object(), object()))
