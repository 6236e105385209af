"""scripts/deploy.py: S3 and IAM on a local moto server, every Beanstalk call checked by botocore's Stubber against
the real service model; and the bundle it ships."""

from __future__ import annotations

import datetime
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import boto3
import pytest
from botocore.stub import ANY, Stubber

from pipeline import index
from scripts import beanstalk, deploy, publish

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


def test_unchanged_files_are_uploaded_downloaded_and_hashed_once(s3_server: str, own_index: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A rebuild whose images did not change: its thumbnails and extractor are already stored by content, so only
    what changed crosses the network, either way; an instance hashes each file once per load."""
    from runtime import artifacts, storage
    from service.searcher import Searcher
    from service.store import BLOB_GRACE_S, fetch_s3_hashed, prune_cache

    boto3.client("s3").create_bucket(Bucket="shop-search")
    first = deploy.upload_artifacts(own_index / "index" / "current", "shop-search", "prod")
    cache = tmp_path / "cache"
    folder, hashed = fetch_s3_hashed("s3://shop-search/prod", cache)
    second = index.run(own_index, trees=4)
    changed = {rel for rel, entry in second["files"].items()
               if artifacts.verify(folder, check_hashes=False)["files"].get(rel) != entry}
    assert changed and all(not rel.startswith(("thumbs/", "extractor/")) for rel in changed)
    published = deploy.upload_artifacts(own_index / "index" / "current", "shop-search", "prod")
    assert published["uploaded"] == len(changed) + 1  # the manifest
    assert published["bytes"] == sum(second["files"][rel]["bytes"] for rel in changed) + \
        (own_index / "index" / "current" / "manifest.json").stat().st_size
    assert published["bytes"] < first["bytes"] / 2
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket="shop-search", Prefix="prod/")["Contents"]]
    assert {k.split("/")[1] for k in keys} == {"blobs", "CURRENT", first["version"], second["version"]}

    downloads, hashes = [], []
    real_sha = storage.sha256_file

    def sha256_file(path: Path, *args):  # the real one, counted
        hashes.append(Path(path).name)
        return real_sha(path, *args)

    storage.s3_client().meta.events.register("provide-client-params.s3.GetObject",
                                             lambda params, **kwargs: downloads.append(params["Key"]))
    monkeypatch.setattr(storage, "sha256_file", sha256_file)
    folder, hashed = fetch_s3_hashed("s3://shop-search/prod", cache)
    Searcher(folder, hashed=hashed)
    assert folder.name == second["version"] and hashed == {folder}
    blobs = [k.rsplit("/", 1)[-1] for k in downloads if "/blobs/" in k]
    assert sorted(blobs) == sorted(second["files"][rel]["sha256"] for rel in changed)
    assert len(downloads) == len(blobs) + 2  # and CURRENT and the manifest, one GET each
    assert len(hashes) == len(second["files"])  # each file once: in the fetch, and not again in the load

    # The first version's blobs stay while it is cached; a blob no cached version links goes after the grace time.
    old = cache / "shop-search" / "prod" / ".blobs"
    orphan = old / ("0" * 64)
    orphan.write_bytes(b"x")
    os.utime(orphan, (0, 0))
    prune_cache(folder)
    assert not orphan.exists() and len(list(old.iterdir())) >= len(second["files"])
    assert BLOB_GRACE_S >= 60


def test_prune_keeps_the_newest_the_served_and_the_bases_of_kept_deltas(s3_server: str, own_index: Path) -> None:
    from pipeline import remove
    from runtime import versions

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="shop-search")
    built = [deploy.upload_artifacts(own_index / "index" / "current", "shop-search", "prod")["version"]]
    for trees in (4, 5):
        index.run(own_index, trees=trees)
        built.append(deploy.upload_artifacts(own_index / "index" / "current", "shop-search", "prod")["version"])
    gone = json.loads((own_index / "index" / "current" / "items.jsonl").read_text().splitlines()[0])["product_id"]
    remove.run(own_index, [str(gone)])  # a delta over built[2]
    built.append(deploy.upload_artifacts(own_index / "index" / "current", "shop-search", "prod")["version"])
    versions.write_s3_pointer(s3, "shop-search", "prod", built[0])  # an admin's rollback to the oldest
    stored = {o["Key"] for o in s3.list_objects_v2(Bucket="shop-search", Prefix="prod/blobs/")["Contents"]}
    kept_files = {e["sha256"] for name in (built[0], built[2], built[3]) for e in json.loads(s3.get_object(
        Bucket="shop-search", Key=f"prod/{name}/manifest.json")["Body"].read())["files"].values()}

    pruned = deploy.prune_s3("shop-search", "prod", keep=1, grace_s=0)
    # the newest (the delta), its base, and the version CURRENT names; built[1] goes
    assert pruned["removed"] == [built[1]] and pruned["kept"] == sorted({built[0], built[2], built[3]}, reverse=True)
    left = {o["Key"] for o in s3.list_objects_v2(Bucket="shop-search", Prefix="prod/")["Contents"]}
    assert not [k for k in left if k.startswith(f"prod/{built[1]}/")]
    assert {k.rsplit("/", 1)[-1] for k in left if k.startswith("prod/blobs/")} == kept_files
    assert pruned["blobs_removed"] == len(stored) - len(kept_files) > 0
    assert deploy.prune_s3("shop-search", "prod", keep=1, grace_s=0)["removed"] == []  # nothing more to do
    with pytest.raises(ValueError, match="at least 1"):
        deploy.prune_s3("shop-search", "prod", keep=0)


def test_two_publishers_never_undo_each_other(s3_server: str, own_index: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A full version built before a `pipeline remove` elsewhere, published after it, would bring the removed
    products back: deploy refuses it, says what moved and how to rebase, and uploads nothing."""
    from pipeline import remove
    from runtime import versions

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="shop-search")
    nightly, shop = own_index, tmp_path / "shop"
    shutil.copytree(own_index, shop, symlinks=True)
    first = deploy.upload_artifacts(nightly / "index" / "current", "shop-search", "prod")["version"]
    sold_out = json.loads(next((shop / "index" / "current").glob("items.jsonl")).read_text().splitlines()[0])
    delta = remove.run(shop, [str(sold_out["product_id"])])["version"]
    assert deploy.upload_artifacts(shop / "index" / "current", "shop-search", "prod")["replaced"] == first
    full = index.run(nightly, trees=4)["version"]  # built on `first`, not on the delta
    with pytest.raises(deploy.DeployError) as refused:
        deploy.upload_artifacts(nightly / "index" / "current", "shop-search", "prod")
    message = str(refused.value)
    assert f"names {delta} (built " in message and f"a delta over {first} that removes 1 and adds 0" in message
    assert f"which {full} was not built on" in message and "--replace-current" in message
    assert "removed.json" in message and "Nothing was uploaded" in message
    assert versions.read_s3_pointer(s3, "shop-search", "prod") == delta
    assert "Contents" not in s3.list_objects_v2(Bucket="shop-search", Prefix=f"prod/{full}/")
    forced = deploy.upload_artifacts(nightly / "index" / "current", "shop-search", "prod", replace_current=True)
    assert forced["replaced"] == delta and versions.read_s3_pointer(s3, "shop-search", "prod") == full
    assert deploy.upload_artifacts(nightly / "index" / "current", "shop-search", "prod")["uploaded"] == 0  # again

    # Another publisher moves CURRENT while this one uploads: the conditional write fails, nothing is undone.
    later = index.run(nightly, trees=5)["version"]
    upload = publish._upload_version

    def upload_then_someone_else_publishes(*args, **kwargs):
        done = upload(*args, **kwargs)
        versions.write_s3_pointer(s3, "shop-search", "prod", delta)  # e.g. an admin's rollback
        return done

    monkeypatch.setattr(publish, "_upload_version", upload_then_someone_else_publishes)
    with pytest.raises(deploy.DeployError, match=f"changed while publishing .*named {full} when this deploy began and "
                                                 f"names {delta} now .*{later} is uploaded but not served"):
        deploy.upload_artifacts(nightly / "index" / "current", "shop-search", "prod")
    assert versions.read_s3_pointer(s3, "shop-search", "prod") == delta


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


def test_the_bundle_installs_tensorflow_only_for_an_extractor_that_needs_it(demo_index: Path) -> None:
    from runtime.extractor import tensorflow_free

    def requirements(bundle: bytes) -> list[str]:
        text = zipfile.ZipFile(io.BytesIO(bundle)).read("requirements.txt").decode()
        return [line.split("==")[0] for line in text.splitlines() if line and not line.startswith("#")]

    lean, with_tf = requirements(deploy.build_bundle()[0]), requirements(deploy.build_bundle(tensorflow=True)[0])
    assert "tensorflow" not in lean and "ai-edge-litert" in lean
    assert set(with_tf) - set(lean) == {"tensorflow"}
    assert deploy.build_bundle()[1] != deploy.build_bundle(tensorflow=True)[1]  # two labels, never confused
    assert not tensorflow_free(demo_index / "index" / "current" / "extractor")  # a TF Hub SavedModel: deploy adds it


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


APP, ENV, BUCKET = "visual-search", "visual-search-prod", "shop-search"
BRANCH_ARN = "arn:aws:elasticbeanstalk:us-east-1::platform/Python 3.11 running on 64bit Amazon Linux 2023/"
PLATFORMS = [{"PlatformArn": BRANCH_ARN + v, "PlatformVersion": v, "PlatformStatus": "Ready",
              "PlatformBranchName": deploy.PLATFORM_BRANCH} for v in ("4.3.0", "4.10.1", "4.9.7")]


@pytest.fixture()
def live_service(demo_index: Path, tmp_path: Path):
    """The real app over the demo index on 127.0.0.1 (what the environment's CNAME answers); yields host:port."""
    from werkzeug.serving import make_server

    from service import create_app

    app = create_app({"ARTIFACTS": str(demo_index / "index" / "current"), "ARTIFACTS_CACHE": str(tmp_path / "c")})
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_port}"
    server.shutdown()


@pytest.fixture()
def aws(s3_server: str):
    """S3 and IAM clients on moto, a Beanstalk client with a Stubber, and the bucket."""
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    eb = boto3.client("elasticbeanstalk")
    with Stubber(eb) as stub:
        yield {"s3": s3, "iam": boto3.client("iam"), "elasticbeanstalk": eb}, stub
        stub.assert_no_pending_responses()


def env(status: str, health: str, label: str, cname: str = "") -> dict:
    state = {"EnvironmentName": ENV, "ApplicationName": APP, "VersionLabel": label, "Status": status, "Health": health}
    return {**state, "CNAME": cname} if cname else state


def expect_version(stub: Stubber, label: str, exists: bool, app_exists: bool = True) -> None:
    stub.add_response("describe_applications", {"Applications": [{"ApplicationName": APP}] if app_exists else []},
                      {"ApplicationNames": [APP]})
    if not app_exists:
        stub.add_response("create_application", {"Application": {"ApplicationName": APP}},
                          {"ApplicationName": APP, "Description": "Visual product search"})
    query = {"ApplicationName": APP, "VersionLabels": [label]}
    version = {"ApplicationName": APP, "VersionLabel": label, "Status": "PROCESSED"}
    stub.add_response("describe_application_versions", {"ApplicationVersions": [version] if exists else []}, query)
    if not exists:
        stub.add_response("create_application_version",
                          {"ApplicationVersion": {**version, "Status": "PROCESSING"}},
                          {"ApplicationName": APP, "VersionLabel": label, "Process": True,
                           "SourceBundle": {"S3Bucket": BUCKET, "S3Key": f"bundles/{label}.zip"}})
        stub.add_response("describe_application_versions",
                          {"ApplicationVersions": [{**version, "Status": "PROCESSING"}]}, query)
        stub.add_response("describe_application_versions", {"ApplicationVersions": [version]}, query)


def expect_polls(stub: Stubber, states: list[dict]) -> None:
    for state in states:
        stub.add_response("describe_environments", {"Environments": [state]}, {"EnvironmentNames": [ENV]})


def expect_existing(stub: Stubber, state: dict | None, properties: dict | None = None) -> None:
    stub.add_response("describe_environments", {"Environments": [state] if state else []},
                      {"ApplicationName": APP, "EnvironmentNames": [ENV], "IncludeDeleted": False})
    if state:
        options = [{"Namespace": deploy.ENV_NAMESPACE, "OptionName": k, "Value": v} for k, v in properties.items()]
        stub.add_response("describe_configuration_settings", {"ConfigurationSettings": [
            {"ApplicationName": APP, "EnvironmentName": ENV, "OptionSettings": options}]},
            {"ApplicationName": APP, "EnvironmentName": ENV})


def run_deploy(clients: dict, demo_index: Path, **kwargs) -> dict:
    return deploy.deploy(demo_index / "index" / "current", BUCKET, APP, ENV, "prod", {"ADMIN_TOKEN": "t"},
                         wait_s=30, poll_s=0, clients=clients, **kwargs)


def test_first_deploy_on_an_empty_account(aws, demo_index: Path, live_service: str, capsys) -> None:
    clients, stub = aws
    label = f"{APP}-{deploy.build_bundle(tensorflow=True)[1]}"
    expect_version(stub, label, exists=False, app_exists=False)
    expect_existing(stub, None)
    stub.add_response("list_platform_versions", {"PlatformSummaryList": PLATFORMS}, {"Filters": [
        {"Type": "PlatformBranchName", "Operator": "=", "Values": [deploy.PLATFORM_BRANCH]},
        {"Type": "PlatformStatus", "Operator": "=", "Values": ["Ready"]}]})
    settings = deploy.environment_settings("s3://shop-search/prod", {"ADMIN_TOKEN": "t"}) + \
        deploy.creation_settings(deploy.INSTANCE_ROLE, deploy.SERVICE_ROLE, deploy.INSTANCE_TYPE)
    stub.add_response("create_environment", env("Launching", "Grey", label),
                      {"ApplicationName": APP, "EnvironmentName": ENV, "VersionLabel": label,
                       "PlatformArn": BRANCH_ARN + "4.10.1", "OptionSettings": settings})
    expect_polls(stub, [env("Launching", "Grey", label), env("Ready", "Green", label, live_service)])
    result = run_deploy(clients, demo_index)
    assert result["environment"]["action"] == "created" and result["bundle"]["new_version"]
    assert result["environment"]["platform"].endswith("/4.10.1")  # the newest, compared as numbers
    assert result["health"]["service"]["status"] == "ok"
    iam = clients["iam"]
    attached = {p["PolicyArn"] for p in iam.list_attached_role_policies(RoleName=deploy.INSTANCE_ROLE)[
        "AttachedPolicies"]}
    assert attached == set(deploy.INSTANCE_POLICIES)
    inline = iam.get_role_policy(RoleName=deploy.INSTANCE_ROLE, PolicyName="visual-search-artifacts")
    statements = {s["Resource"]: s["Action"] for s in inline["PolicyDocument"]["Statement"]}
    assert statements["arn:aws:s3:::shop-search/*"] == ["s3:GetObject"]
    # what an instance may write: the pointer an admin reload moves, and analytics files under their own prefix
    assert statements["arn:aws:s3:::shop-search/prod/CURRENT"] == ["s3:PutObject"]
    assert statements[f"arn:aws:s3:::shop-search/{deploy.EVENTS_PREFIX}/*"] == ["s3:PutObject"]
    assert len(statements) == 4
    profile = iam.get_instance_profile(InstanceProfileName=deploy.INSTANCE_ROLE)["InstanceProfile"]
    assert [r["RoleName"] for r in profile["Roles"]] == [deploy.INSTANCE_ROLE]
    trust = iam.get_role(RoleName=deploy.SERVICE_ROLE)["Role"]["AssumeRolePolicyDocument"]
    assert "elasticbeanstalk.amazonaws.com" in json.dumps(trust)
    body = clients["s3"].get_object(Bucket=BUCKET, Key=f"bundles/{label}.zip")["Body"].read()
    assert body == deploy.build_bundle(tensorflow=True)[0]


def test_redeploy_of_new_code_updates_and_waits_for_the_new_version(aws, demo_index: Path, live_service: str) -> None:
    clients, stub = aws
    label = f"{APP}-{deploy.build_bundle(tensorflow=True)[1]}"
    expect_version(stub, label, exists=False)
    expect_existing(stub, env("Ready", "Green", f"{APP}-old"), {"ARTIFACTS": "s3://shop-search/prod",
                                                                 "ADMIN_TOKEN": "t"})
    stub.add_response("update_environment", env("Updating", "Grey", f"{APP}-old"),
                      {"ApplicationName": APP, "EnvironmentName": ENV, "VersionLabel": label,
                       "OptionSettings": deploy.environment_settings("s3://shop-search/prod", {"ADMIN_TOKEN": "t"})})
    # Ready and Green on the old version is not done: the update has not begun.
    expect_polls(stub, [env("Ready", "Green", f"{APP}-old", live_service), env("Updating", "Green", label),
                        env("Ready", "Green", label, live_service)])
    result = run_deploy(clients, demo_index)
    assert result["environment"] == {"action": "updated", "previous_version": f"{APP}-old"}
    assert result["health"]["version_label"] == label


def test_unchanged_redeploy_creates_no_version_and_changes_nothing(aws, demo_index: Path, live_service: str) -> None:
    clients, stub = aws
    label = f"{APP}-{deploy.build_bundle(tensorflow=True)[1]}"
    expect_version(stub, label, exists=True)
    expect_existing(stub, env("Ready", "Green", label), {"ARTIFACTS": "s3://shop-search/prod", "ADMIN_TOKEN": "t",
                                                         "EVENTS_TARGET": "s3://shop-search/analytics",
                                                         "WEB_CONCURRENCY": "2"})
    expect_polls(stub, [env("Ready", "Green", label, live_service)])
    result = run_deploy(clients, demo_index)
    assert result["environment"]["action"] == "unchanged" and not result["bundle"]["new_version"]
    assert "Contents" not in clients["s3"].list_objects_v2(Bucket=BUCKET, Prefix="bundles/")


def test_catalog_only_publish_touches_no_code_and_no_environment(aws, demo_index: Path, own_index: Path,
                                                                capsys) -> None:
    clients, _stub = aws  # no Beanstalk response is queued: any Beanstalk call fails the test
    first = run_deploy(clients, demo_index, artifacts_only=True)
    version = index.run(own_index, trees=4)["version"]
    deploy.main(["--artifacts", str(own_index / "index" / "current"), "--bucket", BUCKET, "--prefix", "prod",
                 "--artifacts-only"])  # the command a merchandiser runs; it makes its own clients (moto's, here)
    out = capsys.readouterr().out
    second = json.loads(out[out.index("\n{") + 1:])
    assert set(first) == {"artifacts"} and second["artifacts"]["version"] == version != first["artifacts"]["version"]
    pointer = clients["s3"].get_object(Bucket=BUCKET, Key="prod/CURRENT")["Body"].read().decode()
    assert pointer == version
    assert "Contents" not in clients["s3"].list_objects_v2(Bucket=BUCKET, Prefix="bundles/")


def test_an_environment_that_goes_red_fails_with_its_events(aws, demo_index: Path) -> None:
    clients, stub = aws
    label = f"{APP}-{deploy.build_bundle(tensorflow=True)[1]}"
    expect_version(stub, label, exists=True)
    expect_existing(stub, env("Ready", "Green", f"{APP}-old"), {"ARTIFACTS": "s3://shop-search/prod"})
    stub.add_response("update_environment", env("Updating", "Grey", f"{APP}-old"),
                      {"ApplicationName": APP, "EnvironmentName": ENV, "VersionLabel": label,
                       "OptionSettings": deploy.environment_settings("s3://shop-search/prod", {"ADMIN_TOKEN": "t"})})
    expect_polls(stub, [env("Updating", "Grey", label), env("Ready", "Red", label)])
    when = datetime.datetime(2026, 11, 22, 10, 0, tzinfo=datetime.UTC)
    stub.add_response("describe_events", {"Events": [
        {"EventDate": when, "Severity": "ERROR", "Message": "Instance deployment failed. For details, see "
                                                            "'eb-engine.log'."},
        {"EventDate": when, "Severity": "WARN", "Message": "Environment health has transitioned to Severe."}]},
        {"EnvironmentName": ENV, "StartTime": ANY, "MaxRecords": beanstalk.EVENTS_SHOWN})
    with pytest.raises(deploy.DeployError) as error:
        run_deploy(clients, demo_index)
    message = str(error.value)
    assert "went Red" in message and "Instance deployment failed" in message and "Severe" in message
    assert message.index("Severe") < message.index("Instance deployment failed")  # oldest first
    assert "--version-label <previous label>" in message


def test_timeout_names_the_state_and_events(aws) -> None:
    _, stub = aws
    expect_polls(stub, [env("Launching", "Grey", "v1")])
    stub.add_response("describe_events", {"Events": []}, {"EnvironmentName": ENV, "StartTime": ANY,
                                                          "MaxRecords": beanstalk.EVENTS_SHOWN})
    with pytest.raises(deploy.DeployError, match=r"did not become Ready and Green within 0 s \(last: Launching"):
        deploy.wait_until_healthy(aws[0]["elasticbeanstalk"], ENV, "v1", wait_s=0, poll_s=0)
