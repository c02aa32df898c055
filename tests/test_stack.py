"""``fmnist stack`` and the training flow past one machine: variants on two workers in their own clones, and the faults.

One stack for the module and its project (tests/stack_fixtures.py). The tests run in order and
share the stack, and the last one purges it. The long fault drills (workers killed mid-trial and mid-variant, the
stack down and up again, the S3 endpoint down, every process SIGKILLed) are tests/test_stack_drills.py, on a stack of
their own, run by `make test-drills`.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import boto3
import psutil
import pytest
import tiny_repro
import yaml
from conftest import BIN, run
from stack_fixtures import (
    POOL,
    VARIANTS,
    _champion_accuracy,
    _env,
    _flow,
    _fmnist_stack,
    _mlflow,
    _on_workers,
    _prefect,
)

from benchmarks.sandbox import commit
from pipeline import stack
from pipeline.adapters import workspace
from pipeline.core.environment import ALERTS_URL
from pipeline.core.errors import PipelineError
from pipeline.stack import processes


@pytest.fixture(scope="module")
def project(stack_project):
    """The stack's project (tests/stack_fixtures.py), here in place of the conftest's function-scoped one."""
    return stack_project


def test_stopping_processes_together_ends_each_tree_and_kills_one_that_ignores_sigterm(tmp_path):
    """``fmnist stack down`` stops every process at once: one that ignores SIGTERM is killed, its children too."""
    obedient = subprocess.Popen(["sleep", "300"], start_new_session=True)
    stubborn = subprocess.Popen(  # ignores SIGTERM, and has a child that ignores it too
        ["bash", "-c", "trap '' TERM; bash -c \"trap '' TERM; while true; do sleep 0.1; done\" & wait"],
        start_new_session=True,
    )
    time.sleep(0.5)
    [child] = [p.pid for p in psutil.Process(stubborn.pid).children() if p.name() == "bash"]
    gone = subprocess.Popen(["true"])
    gone.wait()
    running = processes.stop_trees(obedient.pid, stubborn.pid, gone.pid, timeout=2)
    assert running == {obedient.pid, stubborn.pid}  # the exited one was not running
    for proc in (obedient, stubborn):
        assert proc.wait(timeout=5) in (-signal.SIGTERM, -signal.SIGKILL)
    assert stubborn.returncode == -signal.SIGKILL and obedient.returncode == -signal.SIGTERM
    deadline = time.monotonic() + 5  # SIGKILL is delivered, not waited for: the orphaned child ends a moment later
    while processes.alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not processes.alive(child)


@pytest.mark.slow
def test_up_starts_every_server_on_localhost_and_prints_what_to_export(up, project):
    out, state, env = up
    for key, value in env.items():
        assert f"export {key}={value}" in out
    rows = stack.status(Path(state["root"]))
    servers = ["s3", "mlflow", "prefect", "relay", "alertmanager", "prometheus"]
    assert [r["name"] for r in rows] == ["postgres", *servers, "worker-1", "worker-2"]
    assert all(r["running"] for r in rows)
    for url in (f"{env['MLFLOW_TRACKING_URI']}/health", f"{env['PREFECT_API_URL']}/health"):
        assert urllib.request.urlopen(url, timeout=10).status == 200
    ui = json.loads(urllib.request.urlopen(env["PREFECT_API_URL"].removesuffix("/api") + "/ui-settings", timeout=10).read())
    assert ui["api_url"] == env["PREFECT_API_URL"]  # the Prefect UI in a browser calls this stack's server
    run([str(BIN / "prefect"), "work-pool", "inspect", POOL], project, env=_env(up))
    clones = {Path(w["clone"]) for w in state["workers"]}
    assert len(clones) == 2 and all((c / "dvc.yaml").exists() and c != project for c in clones)  # each its own checkout
    listening = run(["ss", "-ltnH"], project).stdout  # every port of the stack on loopback only
    for name in ("postgres", *servers):
        assert f"127.0.0.1:{state[name]['port']} " in listening
    assert not re.search(r"(0\.0\.0\.0|\*|\[::\]):9094 ", listening)  # Alertmanager's cluster port is off
    assert run([str(BIN / "dvc"), "remote", "default"], project).stdout.strip() == "stack"


def _get(port: int, path: str):
    return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10).read())


@pytest.mark.slow
def test_prometheus_scrapes_the_stack_and_its_alerts_reach_the_destination_through_alertmanager(up, alert_receiver):
    state, env = up[1], up[2]
    root, prom = Path(state["root"]), state["prometheus"]["port"]
    dead = processes.free_port()  # a fmnist serve that announced itself and died without taking it back
    (Path(env["FMNIST_SCRAPE_TARGETS"]) / f"fmnist-serve-{dead}.json").write_text(
        json.dumps([{"targets": [f"127.0.0.1:{dead}"], "labels": {"model": "fashion-mnist-cnn"}}])
    )
    rule = {"alert": "FmnistStackDrill", "expr": "vector(1)", "labels": {"severity": "page"},
            "annotations": {"summary": "a drill: this rule always fires"}}  # fmt: skip
    (root / "prometheus" / "rules" / "drill.yml").write_text(yaml.safe_dump({"groups": [{"name": "drill", "rules": [rule]}]}))
    urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{prom}/-/reload", method="POST"), timeout=10)

    health, deadline = {}, time.monotonic() + 60
    while time.monotonic() < deadline:
        targets = _get(prom, "/api/v1/targets")["data"]["activeTargets"]
        health = {t["labels"]["job"]: t["health"] for t in targets}
        if len(health) == 5 and "unknown" not in health.values():
            break
        time.sleep(1)
    assert health == {"prometheus": "up", "alertmanager": "up", "mlflow": "up", "prefect": "up", "fmnist-serve": "down"}
    rules = {r["name"] for g in _get(prom, "/api/v1/rules")["data"]["groups"] for r in g["rules"]}
    assert {"FmnistServeDown", "FmnistServeSwapFailed", "FmnistStackDrill"} <= rules  # the repository's and the drill's

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any("FmnistStackDrill" in a.get("title", "") for a in alert_receiver.received):
        time.sleep(0.5)
    drill = next(a for a in alert_receiver.received if "FmnistStackDrill" in a.get("title", ""))
    assert drill["title"] == "[FIRING] FmnistStackDrill" and drill["type"] == "failure"  # severity page
    assert "a drill: this rule always fires" in drill["message"]
    (root / "prometheus" / "rules" / "drill.yml").unlink()
    urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{prom}/-/reload", method="POST"), timeout=10)

    names = {a["name"] for a in _prefect(up, "automations/filter", {})}
    assert {"fmnist: flow run failed or crashed", "fmnist: flow run late"} <= names


def test_a_malformed_alert_destination_stops_up_before_anything_starts(project, tmp_path):
    cmd = [str(BIN / "fmnist"), "stack", "up", "--dir", str(tmp_path / "stack")]
    proc = run(cmd, project, check=False, env=tiny_repro.project_env(**{ALERTS_URL: "nonsense"}))
    assert proc.returncode == 2 and f"{ALERTS_URL}='<not a URL>' is not an apprise URL" in proc.stderr
    assert not (tmp_path / "stack" / "stack.json").exists()


@pytest.mark.slow
def test_stack_env_prints_only_export_lines_that_bash_can_eval(up, project, tmp_path):
    env_out = _fmnist_stack(up, project, "env").stdout
    assert env_out.splitlines() and all(line.startswith("export ") for line in env_out.splitlines())
    assert up[0].rstrip().endswith(env_out.rstrip())  # up ends with the same lines
    assert not [line for line in up[0].splitlines() if line.startswith("export") and "=" not in line]  # no sentence
    script = f'eval "$({BIN / "fmnist"} stack env --dir {up[1]["root"]})" && echo "$MLFLOW_TRACKING_URI $AWS_ENDPOINT_URL"'
    shown = run(["bash", "-c", script], project, env=tiny_repro.project_env()).stdout.split()
    assert shown == [up[2]["MLFLOW_TRACKING_URI"], up[2]["AWS_ENDPOINT_URL"]]
    (tmp_path / "up.txt").write_text(up[0])  # the issue's `eval "$(fmnist stack up | grep ^export)"`, on up's own output
    grepped = f'eval "$(grep ^export {tmp_path / "up.txt"})" && echo "$PREFECT_API_URL"'
    assert run(["bash", "-c", grepped], project, env=tiny_repro.project_env()).stdout.strip() == up[2]["PREFECT_API_URL"]


@pytest.mark.slow
def test_a_dvc_push_without_credentials_names_them_and_the_fix(up, project, monkeypatch):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(project / "no-such-credentials"))
    with pytest.raises(PipelineError) as failed:
        workspace.publish(project, ["prepare"], run_cache=False)
    message = str(failed.value)
    assert message.startswith("dvc push prepare failed in")
    assert "ERROR: unexpected error - Unable to locate credentials" in message  # DVC's own cause, not its support footer
    assert "fix: the S3 remote needs credentials: export the variables of `fmnist stack env`" in message
    assert "Having any troubles" not in message


@pytest.mark.slow
def test_variants_train_on_two_workers_and_come_back_as_from_a_sequential_run(up, project, prepared_cache, tmp_path_factory):
    proc = _flow(project, up, "--workers", POOL)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    done = {r["variant"]: r for r in _on_workers(up)}
    assert sorted(done) == sorted(VARIANTS)
    assert {r["worker"] for r in done.values()} == {"worker-1", "worker-2"}  # each worker trained one
    commit = run(["git", "rev-parse", "HEAD"], project).stdout.strip()
    for variant, record in done.items():
        assert record["commit"] == commit and record["attempts"] == 1
        # nothing trained twice: the coordinator's two stages came out of the run cache the worker pushed
        assert record["restored"] == [f"train@{variant}", f"evaluate@{variant}"]
        clone = Path(next(w["clone"] for w in up[1]["workers"] if w["log"].endswith(f"{record['worker']}.log")))
        assert (clone / "models" / variant / "history.csv").read_bytes() == (
            project / "models" / variant / "history.csv"
        ).read_bytes()
    assert "Data and pipelines are up to date" in run([str(BIN / "dvc"), "status"], project).stdout
    assert (project / "reports" / "summary.md").exists() and json.loads((project / "reports" / "promotion.json").read_text())

    sequential = tiny_repro.reproduced(prepared_cache, tmp_path_factory)  # the same params and seeds, on one machine
    lock, seq_lock = (yaml.safe_load((p / "dvc.lock").read_text())["stages"] for p in (project, sequential))
    assert lock["train@baseline"]["deps"] == seq_lock["train@baseline"]["deps"]  # same code, same data
    assert lock["train@baseline"]["params"] == seq_lock["train@baseline"]["params"]
    code = [d for d in lock["evaluate@baseline"]["deps"] if not d["path"].startswith("models/")]  # model.keras: a zip, dated
    assert code == [d for d in seq_lock["evaluate@baseline"]["deps"] if not d["path"].startswith("models/")]
    assert (project / "models/baseline/history.csv").read_bytes() == (sequential / "models/baseline/history.csv").read_bytes()
    ours, theirs = (json.loads((p / "reports/metrics/baseline.json").read_text()) for p in (project, sequential))
    for key in ("val_accuracy", "test_accuracy", "test_loss", "macro_f1", "per_class_recall"):
        assert ours[key] == theirs[key], key  # to the digit
    assert (project / "reports/confusion/baseline.csv").read_text() == (sequential / "reports/confusion/baseline.csv").read_text()

    env = up[2]
    s3 = boto3.client(
        "s3",
        endpoint_url=env["MLFLOW_S3_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    )
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="fmnist-mlflow").get("Contents", [])]
    assert any(k.endswith("model.keras") for k in keys), keys[:20]  # the models' files are in the bucket
    history = json.loads(run([str(BIN / "fmnist"), "history", "--json"], project, env=_env(up)).stdout)
    champion = _mlflow(up).get_model_version_by_alias("fashion-mnist-cnn", "champion")
    assert history[-1]["alias"] == "champion" and history[-1]["to"] == champion.version


@pytest.mark.slow
def test_the_champion_resolves_from_a_third_clone_that_shares_only_the_servers(up, project, prepared_cache, tmp_path):
    third = tmp_path / "third"
    run(["git", "clone", "-q", str(project), str(third)], tmp_path)
    assert not (third / "models").exists() and not (third / "mlflow.db").exists()
    accuracy = _champion_accuracy(up, prepared_cache, third)
    record = json.loads((project / "reports" / "promotion.json").read_text())
    reported = json.loads((project / "reports" / "metrics" / f"{record['variant']}.json").read_text())["test_accuracy"]
    assert accuracy == pytest.approx(reported, abs=1e-4)  # the champion's files, from S3 through the server, as evaluated


@pytest.mark.slow
def test_fmnist_serve_on_the_stack_logs_to_its_postgresql_and_fmnist_monitor_reads_the_window_there(
    up, project, prepared_cache, tmp_path
):
    from conftest import fmnist_serve

    from pipeline.adapters import open_inference
    from pipeline.adapters.files import load_split
    from pipeline.adapters.prediction_log import open_store
    from pipeline.core.environment import PREDICTIONS_URL

    clone = tmp_path / "serving"
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    (clone / "data" / "prepared").symlink_to(prepared_cache / "data" / "prepared")  # the monitor's training reference
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["serve"] = {"poll_s": 60, "log": True, "sample_rate": 1.0}
    params["monitor"] = {"window_h": 1, "min_images": 50}
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    table, sent = open_store(up[2][PREDICTIONS_URL]), load_split(prepared_cache / "data" / "prepared" / "test.npz")[0][:60]
    with fmnist_serve(clone, _env(up), tmp_path / "serve.log") as port:
        open_inference.infer(f"http://127.0.0.1:{port}", "fashion-mnist-cnn", sent)
        deadline = time.monotonic() + 30  # the log writes a second behind, off the request path
        while len(table.records()) < len(sent) and time.monotonic() < deadline:
            time.sleep(0.2)
    assert "logging predictions to postgresql://postgres@127.0.0.1:" in (tmp_path / "serve.log").read_text()
    images, records = table.sampled()
    assert len(records) == len(sent) and len({r["version"] for r in records}) == 1
    assert sorted(map(bytes, images)) == sorted(map(bytes, sent))  # each image sampled, as sent
    assert not (clone / "data" / "predictions").exists()  # nothing beside the database
    out = run([str(BIN / "fmnist"), "monitor", "--json"], clone, env=_env(up)).stdout
    window = json.loads(out[re.search(r"^\{$", out, re.M).start() :])  # after the flow's log lines
    assert window["images"] == len(sent) and window["report"] is not None, window["message"]  # judged, from the table
    table.close()


@pytest.mark.slow
def test_the_retraining_deployment_of_prefect_yaml_runs_on_the_stacks_workers(up, project):
    run([str(BIN / "prefect"), "--no-prompt", "deploy", "--name", "retraining"], project, env=_env(up))
    proc = run(
        [str(BIN / "prefect"), "deployment", "run", "retraining/retraining", "--watch"], project, check=False, env=_env(up)
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Completed" in proc.stdout
    (flow_run,) = _prefect(up, "flow_runs/filter", {"flow_runs": {"name": {"any_": [_run_name(proc.stdout)]}}})
    assert flow_run["state_type"] == "COMPLETED" and flow_run["work_pool_name"] == POOL  # a worker of the pool ran it
    logs = _prefect(up, "logs/filter", {"logs": {"flow_run_id": {"any_": [flow_run["id"]]}}})
    assert any("nothing new" in entry["message"] for entry in logs)  # the loop ran: intake, drift, decision


def _run_name(out: str) -> str:
    """The flow run's name in the output of ``prefect deployment run``."""
    return re.search(r"Created flow run '([^']+)'", out).group(1)


@pytest.mark.slow
def test_a_worker_refuses_a_commit_that_its_git_remote_lacks(up, project, tmp_path):
    scratch = tmp_path / "scratch"
    run(["git", "clone", "-q", str(project), str(scratch)], tmp_path)
    (scratch / "NOTE").write_text("not pushed\n")
    unpushed = commit(scratch, "a commit nobody pushed")
    prepared = yaml.safe_load((project / "dvc.lock").read_text())["stages"]["prepare"]
    script = (
        "import json, sys\nfrom prefect.deployments import run_deployment\n"
        "r = run_deployment('variant/variant', parameters=json.loads(sys.argv[1]), timeout=300, poll_interval=1)\n"
        "print(json.dumps({'state': r.state.type.value, 'message': r.state.message}))\n"
    )
    parameters = json.dumps({"variant": "baseline", "commit": unpushed, "prepared": prepared})
    out = run([str(BIN / "python"), "-c", script, parameters], project, env=_env(up)).stdout.splitlines()[-1]
    state = json.loads(out)
    assert state["state"] == "FAILED"
    assert f"commit {unpushed[:12]} is not in its git remote" in state["message"] and "Push the commit" in state["message"]


@pytest.mark.slow
def test_down_and_down_purge_on_a_stopped_stack_say_so_and_remove_its_folder(up, project):
    root = Path(up[1]["root"])
    _fmnist_stack(up, project, "down")
    again = _fmnist_stack(up, project, "down")
    assert again.returncode == 0 and "no stack runs in" in again.stdout
    purged = _fmnist_stack(up, project, "down", "--purge")
    assert purged.returncode == 0 and f"removed {root}" in purged.stdout
    assert not root.exists()
    assert "stack" not in run([str(BIN / "dvc"), "remote", "list"], project).stdout
