"""``fmnist stack``: the team's servers on 127.0.0.1 (PostgreSQL, an S3 endpoint, MLflow, Prefect, workers), and the pipeline run against them.

One stack per module, in a project copy: up with one worker in its own clone, a tiny ``fmnist
run`` against it (MLflow on PostgreSQL with artifacts in the S3 bucket, the registry lock in
PostgreSQL), ``dvc push`` to the S3 remote and a pull from a clone, then down.
"""

from __future__ import annotations

import json
import tempfile
import urllib.request
from pathlib import Path

import boto3
import pytest
import tiny_repro
from conftest import BIN, checkout_prepared, make_project, run, tiny_params

from pipeline.adapters import stack


@pytest.fixture(scope="module")
def project(prepared_cache, tmp_path_factory):
    repo = make_project(tmp_path_factory.mktemp("stack") / "repo", tiny_params(("baseline",)))
    return checkout_prepared(repo, prepared_cache)


@pytest.fixture(scope="module")
def up(project):
    root = Path(tempfile.mkdtemp(prefix="fmnist-stack-"))  # not under pytest's root-only temp dir: postgres must reach it
    root.chmod(0o755)
    proc = run([str(BIN / "fmnist"), "stack", "up", "--workers", "1", "--dir", str(root)], project, env=tiny_repro.project_env())
    state = stack.load(root)
    try:
        yield proc.stdout, state, stack.environment(state)
    finally:
        down = [str(BIN / "fmnist"), "stack", "down", "--purge", "--dir", str(root)]
        run(down, project, check=False, env=tiny_repro.project_env())


@pytest.mark.slow
def test_up_starts_every_server_on_localhost_and_prints_what_to_export(up, project):
    out, state, env = up
    for key, value in env.items():
        assert f"export {key}={value}" in out
    rows = stack.status(Path(state["root"]))
    assert [r["name"] for r in rows] == ["postgres", "s3", "mlflow", "prefect", "worker-1"] and all(r["running"] for r in rows)
    for url in (f"{env['MLFLOW_TRACKING_URI']}/health", f"{env['PREFECT_API_URL']}/health"):
        assert urllib.request.urlopen(url, timeout=10).status == 200
    run([str(BIN / "prefect"), "work-pool", "inspect", "fmnist-process"], project, env=tiny_repro.project_env(**env))
    clone = Path(state["workers"][0]["clone"])
    assert (clone / "dvc.yaml").exists() and clone != project  # the worker's own checkout
    listening = run(["ss", "-ltnH"], project).stdout  # every port of the stack on loopback only
    for name in ("postgres", "s3", "mlflow", "prefect"):
        assert f"127.0.0.1:{state[name]['port']} " in listening


@pytest.mark.slow
def test_the_pipeline_runs_against_the_stack_and_its_data_goes_through_the_s3_remote(up, project):
    _, state, env = up
    proc = run([str(BIN / "fmnist"), "run"], project, env=tiny_repro.project_env(**env))
    assert proc.returncode == 0
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    champion = client.get_model_version_by_alias("fashion-mnist-cnn", "champion")
    s3 = boto3.client(
        "s3",
        endpoint_url=env["MLFLOW_S3_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    )
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="fmnist-mlflow").get("Contents", [])]
    assert any(k.endswith("model.keras") for k in keys), keys[:20]  # the model's files are in the bucket
    history = json.loads(run([str(BIN / "fmnist"), "history", "--json"], project, env=tiny_repro.project_env(**env)).stdout)
    assert history[-1]["alias"] == "champion" and history[-1]["to"] == champion.version

    run(["git", "add", "dvc.lock", "params.yaml"], project)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "run"], project)
    run([str(BIN / "dvc"), "push", "-q", "-r", "stack", "prepare"], project, env=tiny_repro.project_env(**env))
    clone = Path(state["workers"][0]["clone"])  # shares only the git remote (the project), the servers and the S3 remote
    run(["git", "pull", "-q"], clone)
    assert not (clone / "data" / "prepared").exists()
    run([str(BIN / "dvc"), "pull", "-q", "-r", "stack", "prepare"], clone, env=tiny_repro.project_env(**env))
    assert (clone / "data" / "prepared" / "test.npz").read_bytes() == (project / "data" / "prepared" / "test.npz").read_bytes()
