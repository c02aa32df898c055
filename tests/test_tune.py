"""``fmnist tune``: a real Optuna study (SQLite storage) over real data, tracked in a real MLflow store, resumed after
a Ctrl-C, confirmed on unseen seeds, applied to ``params.yaml`` as a variant that ``dvc repro`` trains and the gate
judges, and served by optuna-dashboard.

The study is tiny (a 2,000-image subset, 1 epoch a trial, 3 trials); the real ones are in docs/tuning.md.
"""

from __future__ import annotations

import difflib
import json
import signal
import subprocess
import time
import urllib.request

import optuna
import pytest
import yaml
from conftest import BIN, ROOT, dvc, mlflow_client, run, trained_figure, wait_for_url, write_params
from optuna.trial import TrialState

from pipeline.adapters.params_file import add_variant
from pipeline.core.config import load_params
from pipeline.stack.processes import free_port

STUDY = {"variant": "baseline", "trials": 2, "pruner": "median", "seed": 3,
         "space": {"learning_rate": {"log": [0.0005, 0.005]}, "dropout": {"uniform": [0.0, 0.3]}}}  # fmt: skip
ARGS = ["--limit", "2000", "--epochs", "1"]


def _tune(project, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run([str(BIN / "fmnist"), "tune", "quick", *ARGS, *args], project, check=check)


def _trials(project) -> list:
    return optuna.load_study(study_name="quick", storage=f"sqlite:///{project / 'optuna.db'}").get_trials()


def _sampled(trial) -> bool:
    """A running trial that has sampled all its settings: cut before, it would have none to run again."""
    return trial.state == TrialState.RUNNING and len(trial.params) == len(STUDY["space"])


@pytest.mark.slow
def test_a_study_tracks_each_trial_resumes_after_ctrl_c_and_applies_its_best_settings_as_a_variant(prepared_project):
    project = prepared_project
    params = yaml.safe_load((project / "params.yaml").read_text())
    write_params(project, params | {"tune": {"quick": STUDY}})
    test_split, aside = project / "data" / "prepared" / "test.npz", project / "test.npz.aside"
    test_split.rename(aside)  # a trial never reads the test set: the study runs without it

    out = _tune(project).stdout
    assert "study quick: " in out and "report: " in out
    first = _trials(project)
    assert len(first) == 2 and {t.state for t in first} <= {TrialState.COMPLETE, TrialState.PRUNED}

    # Ctrl-C in the middle of the next trial: that trial fails, its run closes, and the next command runs it again;
    # the command started as a shell starts a background job (`nohup fmnist tune quick &`), with SIGINT ignored
    proc = subprocess.Popen([str(BIN / "fmnist"), "tune", "quick", *ARGS, "--trials", "3"], cwd=project,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))  # fmt: skip
    # in the middle of it: its MLflow run open (it opens after the sampling; a Ctrl-C between the two, a window a busy
    # AMD EPYC hit, leaves a failed trial with no run, which the next command's retry runs all the same)
    client = mlflow_client(project)
    exp = client.get_experiment_by_name("fashion-mnist-tuning").experiment_id
    training = "tags.`fmnist.role` = 'trial' and attributes.status = 'RUNNING'"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not client.search_runs([exp], training):
        time.sleep(0.2)
    assert any(map(_sampled, _trials(project)))
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0, out
    (cut,) = [t for t in _trials(project) if t.state == TrialState.FAIL]
    assert cut.number == 2
    out = _tune(project, "--trials", "3").stdout
    trials = _trials(project)
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(trials) == 4 and len(done) == 3  # none lost, none run twice
    (retry,) = [t for t in trials if t.user_attrs.get("retry_of") == cut.number]
    assert retry.params == cut.params and retry.state != TrialState.FAIL

    # MLflow: one parent run for the study, a child run per trial, none left RUNNING
    (parent,) = client.search_runs([exp], "tags.`fmnist.role` = 'study'")
    assert parent.info.status == "FINISHED" and parent.data.params["sampler.seed"] == "3"
    assert parent.data.tags["git.commit"] and "data.prepared_md5" in parent.data.tags
    children = client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(int(r.data.tags["optuna.trial"]) for r in children) == [0, 1, 2, 3]
    assert not [r for r in children if r.info.status == "RUNNING"]
    by_trial = {int(r.data.tags["optuna.trial"]): r for r in children}
    assert by_trial[2].info.status == "FAILED" and by_trial[2].data.tags["optuna.state"] == "failed"
    assert by_trial[3].data.tags["optuna.retry_of"] == "2"
    for t in done:
        r = by_trial[t.number]
        assert r.data.tags["optuna.state"] == t.state.name.lower()
        assert {k: float(v) for k, v in r.data.params.items()} == pytest.approx(t.params)
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "val_accuracy")]
        assert steps == list(range(1, len(t.intermediate_values) + 1))
        if t.state == TrialState.COMPLETE:
            assert r.data.metrics["objective"] == pytest.approx(t.value)

    # the report: the best trial, the counts, the figures
    report = json.loads((project / "reports" / "tune" / "quick.json").read_text())
    best = max((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert report["best"][0]["number"] == best.number and report["best_value"] == pytest.approx(best.value)
    assert sum(report["counts"].values()) == 4
    assert (project / "reports" / "tune" / "quick-history.png").stat().st_size > 1000
    assert f"| {best.number} | {best.value:.4f} |" in (project / "reports" / "tune" / "quick.md").read_text()

    # --confirm: the best trial and the reference on 2 seeds the search never used, scored on the test set at last
    aside.rename(test_split)
    out = _tune(project, "--confirm", "2").stdout
    assert f"trial {best.number}: test " in out and "reference: test " in out
    confirmed = json.loads((project / "reports" / "tune" / "quick-confirm.json").read_text())
    seed = params["base"]["seed"]
    labels = ["reference", f"trial {best.number}"]
    assert confirmed["trial"] == best.number and list(confirmed["candidates"]) == labels
    assert [(r["settings"], r["seed"]) for r in confirmed["runs"]] == [(c, s) for c in labels for s in (seed + 1, seed + 2)]
    assert all(0.3 < r["test_accuracy"] <= 1 and r["epochs_trained"] == 1 for r in confirmed["runs"])  # chance is 0.1
    assert confirmed["candidates"][labels[1]]["settings"] == pytest.approx(best.params)
    runs = client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent.info.run_id}' and tags.`fmnist.role` = 'confirm'")
    assert sorted((r.data.tags["fmnist.confirm"], int(r.data.tags["fmnist.seed"])) for r in runs) == sorted(
        (r["settings"], r["seed"]) for r in confirmed["runs"]
    )
    assert all(r.info.status == "FINISHED" for r in runs)
    assert sorted(r.data.metrics["test_accuracy"] for r in runs) == pytest.approx(
        sorted(r["test_accuracy"] for r in confirmed["runs"])
    )
    text = (project / "reports" / "tune" / "quick.md").read_text()
    assert "## Confirmation on seeds the search never used" in text
    assert f"--confirm 2` ({confirmed['when']}, {confirmed['machine']}): " in text and " cores" in confirmed["machine"]
    assert f"| trial {best.number} | {seed + 2} | " in text
    assert json.loads((project / "reports" / "tune" / "quick.json").read_text())["confirmation"]["trial"] == best.number

    # --apply: the best settings become a variant of params.yaml, its comments kept; dvc repro takes it from there
    (project / "params.yaml").write_text("# a comment of the user's\n" + (project / "params.yaml").read_text())
    _tune(project, "--apply", "tuned")
    text = (project / "params.yaml").read_text()
    assert text.startswith("# a comment of the user's\n") and f"trial {best.number}, val_accuracy" in text
    tuned = load_params(project / "params.yaml").variant("tuned")
    assert tuned.learning_rate == pytest.approx(best.params["learning_rate"]) and tuned.architecture == "tutorial_cnn"
    again = _tune(project, "--apply", "tuned", check=False)
    assert again.returncode == 2 and "variants.tuned: already in" in again.stderr

    # --dashboard: optuna-dashboard on 127.0.0.1 over the same storage
    port, log = free_port(), project / "dashboard.log"
    with open(log, "w") as out:
        dash = subprocess.Popen([str(BIN / "fmnist"), "tune", "quick", "--dashboard", "--port", str(port)], cwd=project,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        wait_for_url(f"http://127.0.0.1:{port}/api/studies", 60, dash, log)
        studies = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=10).read())
        assert [s["study_name"] for s in studies["study_summaries"]] == ["quick"]
    finally:
        dash.kill()
        dash.wait()

    # dvc repro trains the applied variant like any other, and the gate judges it (here the only variant left)
    applied = yaml.safe_load((project / "params.yaml").read_text())
    applied["variants"] = {"tuned": applied["variants"]["tuned"]}
    applied["evaluate"]["tta"] = {k: v for k, v in (applied["evaluate"].get("tta") or {}).items() if k == "tuned"}
    del applied["tune"]  # its study starts from a variant no longer here
    write_params(project, applied)
    dvc(project, "repro")
    tuned = json.loads((project / "reports" / "metrics" / "tuned.json").read_text())["test_accuracy"]
    assert trained_figure("tune: applied variant, test accuracy", tuned) > 0.3  # AMD EPYC 0.736 (docs/development.md)
    promotion = json.loads((project / "reports" / "promotion.json").read_text())
    assert promotion["variant"] == "tuned" and promotion["decision"] in ("promoted", "refused") and promotion["reason"]


def test_apply_adds_lines_to_the_real_params_file_and_changes_none(tmp_path):
    """--apply's writer on the project's own params.yaml: quotes, list layout, comments and blank lines as they were."""
    path = tmp_path / "params.yaml"
    before = (ROOT / "params.yaml").read_text()
    path.write_text(before)
    add_variant(path, "tuned", "wide_aug", {"learning_rate": 0.004, "augment.erase": 0.25}, "from a study", tta="flip+shift")
    after = path.read_text()
    changed = [line for line in difflib.ndiff(before.splitlines(), after.splitlines()) if line[:2] in ("- ", "+ ")]
    assert changed and all(line.startswith("+ ") for line in changed), changed
    assert "\n\n  # from a study\n  tuned:\n" in after and "    tuned: flip+shift\n" in after
    tuned = load_params(path).variant("tuned")
    assert (tuned.learning_rate, tuned.augment.erase, tuned.architecture) == (0.004, 0.25, "wide_cnn")


@pytest.mark.slow
def test_a_trial_whose_training_diverges_fails_alone_counts_and_is_not_run_again(prepared_project):
    project = prepared_project
    params = yaml.safe_load((project / "params.yaml").read_text())
    wild = STUDY | {"trials": 1, "space": {"learning_rate": {"log": [1e11, 1e12]}}}  # Adam at 1e11: the loss explodes
    write_params(project, params | {"tune": {"quick": wild}})
    out = _tune(project).stdout
    assert "study quick: 0 complete, 0 pruned, 1 failed" in out
    _tune(project)  # the same command again: the study holds its trial; nothing runs again
    (trial,) = _trials(project)
    assert trial.state == TrialState.FAIL and "training diverged" in trial.user_attrs["diverged"]
    client = mlflow_client(project)
    (run_,) = client.search_runs([client.get_experiment_by_name("fashion-mnist-tuning").experiment_id],
                                 "tags.`fmnist.role` = 'trial'")  # fmt: skip
    assert run_.info.status == "FAILED" and "TrainingDiverged" in run_.data.tags["fmnist.failure"]


def test_the_stacks_postgresql_holds_a_study_that_a_second_process_resumes(postgres):
    """The storage ``fmnist stack up`` sets (``FMNIST_TUNE_STORAGE``): PostgreSQL, through Optuna's RDBStorage."""
    from pipeline.adapters import studies
    from pipeline.core.config import parse_params

    spec = parse_params(yaml.safe_load((ROOT / "params.yaml").read_text()) | {"tune": {"quick": STUDY}}).tune["quick"]
    study = studies.open_study("quick", spec, postgres, max_epochs=2)
    studies.optimize(study, lambda t: -((studies.suggest(t, spec.space)["dropout"] - 0.1) ** 2), 3, 0)
    assert studies.done(study) == 3
    script = (
        "import optuna, sys\n"
        "s = optuna.load_study(study_name='quick', storage=sys.argv[1])\n"
        "print(len(s.trials), s.best_trial.number)\n"
    )
    out = run([str(BIN / "python"), "-c", script, postgres], ROOT).stdout.split()
    assert out == ["3", str(study.best_trial.number)]
    studies.optimize(study, lambda t: 0.0, 3, 0)  # the budget is met: no trial more
    assert len(study.trials) == 3


def test_a_postgresql_restart_mid_trial_is_waited_out_and_the_study_goes_on():
    """The stack's PostgreSQL stopped while a trial reports an epoch, and started again 4 s later on the same port:
    the trial's writes wait for it, its heartbeat beats on, and the study ends with every trial complete."""
    import glob
    import shutil
    import tempfile
    import threading
    import types
    from pathlib import Path

    from pipeline.adapters import studies
    from pipeline.core.config import parse_params
    from pipeline.stack import postgres as pg

    if not glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        pytest.skip("PostgreSQL is not installed: apt-get install -y postgresql (CI installs it)")
    root = Path(tempfile.mkdtemp(prefix="fmnist-pg-"))
    root.chmod(0o755)
    info = pg.start(root, databases=())
    restarted = []
    try:
        url = f"postgresql://postgres@127.0.0.1:{info['port']}/postgres"
        spec = parse_params(yaml.safe_load((ROOT / "params.yaml").read_text()) | {"tune": {"quick": STUDY}}).tune["quick"]
        study = studies.open_study("restart", spec, url, max_epochs=3)

        def objective(trial) -> float:
            dropout = studies.suggest(trial, spec.space)["dropout"]
            epochs = []
            prune = studies.Pruning(trial, lambda epoch, logs: epochs.append(epoch))
            prune.set_model(types.SimpleNamespace(stop_training=False))  # what the callback touches of a Keras model
            prune.on_train_begin()
            for epoch in range(3):
                if trial.number == 1 and epoch == 1:  # the database goes down just before this epoch's report
                    pg.stop(info)
                    restart = lambda: restarted.append(pg.start(root, databases=(), port=info["port"]))  # noqa: E731
                    threading.Timer(4, restart).start()
                prune.on_epoch_end(epoch, {"val_accuracy": 0.5 + 0.1 * epoch})
            studies.set_attrs(trial, epochs=len(epochs))
            return -((dropout - 0.1) ** 2)

        studies.optimize(study, objective, 3, 0)
        assert restarted, "PostgreSQL was not restarted mid-trial"
        trials = optuna.load_study(study_name="restart", storage=url).get_trials()
        assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
        assert trials[1].intermediate_values == {1: 0.5, 2: 0.6, 3: 0.7} and trials[1].user_attrs["epochs"] == 3
    finally:
        pg.stop(restarted[-1] if restarted else info)
        shutil.rmtree(root, ignore_errors=True)


def test_tune_on_workers_refuses_a_storage_the_workers_cannot_share(project):
    params = yaml.safe_load((project / "params.yaml").read_text()) | {"tune": {"quick": STUDY}}
    write_params(project, params)
    proc = run([str(BIN / "fmnist"), "tune", "quick", "--workers", "fmnist-process"], project, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "cannot share" in proc.stderr and "FMNIST_TUNE_STORAGE" in proc.stderr and "fmnist stack env" in proc.stderr
    assert not (project / "optuna.db").exists()  # nothing opened, nothing started
