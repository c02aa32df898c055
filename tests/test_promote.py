"""The champion/challenger gate (``pipeline/core/gate.py``, ``pipeline/services/promotion.py``): the rules, a real registry, rollback, integrity, and the race.

The registry tests share one project copy with a real SQLite store holding two real models:
``worse`` (1 epoch on 300 images) and ``better`` (1 epoch on 1,200 images), logged the way
``evaluate`` logs them. Its test split is cut to the first 2,000 images, so that every gate
(two model loads, two scorings) takes seconds. Each test sets the aliases it starts from, so
none depends on another.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import mlflow
import pytest
import race
import tiny_repro
from conftest import (
    checkout_prepared,
    make_project,
    mlflow_client,
    no_clients,
    record_reliability,
    repeats,
    tiny_params,
    trained_figure,
)
from mlflow.exceptions import MlflowException
from race import HOLD_S

from pipeline.adapters.files import file_sha256, load_split, save_split
from pipeline.adapters.mlflow import registry, serving
from pipeline.adapters.mlflow import store as mlflow_store
from pipeline.adapters.paths import Paths
from pipeline.cli import main as fmnist
from pipeline.core import gate
from pipeline.core.config import Registry, load_params
from pipeline.core.errors import RegistryError
from pipeline.services import promotion
from pipeline.stages import train as train_stage

NAMES = [f"class{i}" for i in range(10)]
RULES = Registry(margin=0.002, recall_tolerance=0.02, floor=0.80)


def _scores(accuracy: float, **recall: float) -> dict:
    return {"test_accuracy": accuracy, "per_class_recall": {n: recall.get(n, 0.85) for n in NAMES}}


# --- the rules -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("challenger", "champion", "promote_it", "reason"),
    [
        (_scores(0.85), None, True, "no champion yet; test accuracy 0.8500 clears the floor 0.8000"),
        (_scores(0.80), None, True, "clears the floor"),  # the floor itself is enough
        (_scores(0.79), None, False, "no champion yet, but test accuracy 0.7900 is below the floor 0.8000"),
        (_scores(0.86), _scores(0.85), True, "beats champion 0.8500 by +0.0100"),
        (_scores(0.8130), _scores(0.8110), True, "by +0.0020"),  # exactly the margin (0.0019999... in floats)
        (_scores(0.8519), _scores(0.8500), False, "gain +0.0019 is below the margin 0.0020"),
        (_scores(0.85), _scores(0.85), False, "gain +0.0000 is below the margin"),
        (_scores(0.80), _scores(0.85), False, "gain -0.0500 is below the margin"),
        (_scores(0.90, class3=0.80), _scores(0.85), False, "recall of class3 drops by 0.0500, more than the tolerance 0.0200"),
        (_scores(0.90, class3=0.83), _scores(0.85), True, "no class recall drops more than 0.0200"),  # exactly the tolerance
        (_scores(0.90, class3=0.829), _scores(0.85), False, "recall of class3 drops by 0.0210"),
    ],
)
def test_decide(challenger, champion, promote_it, reason):
    decision = gate.decide(challenger, champion, RULES)
    assert decision.promote is promote_it
    assert reason in decision.reason


def test_decide_reports_the_class_with_the_largest_recall_drop():
    challenger = _scores(0.95, class1=0.82, class7=0.70)
    assert "recall of class7 drops by 0.1500" in gate.decide(challenger, _scores(0.85), RULES).reason


# --- a real registry -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Store:
    repo: Path
    params: object
    worse: str  # registered versions of params.registry.model_name
    better: str
    race_worse: str  # the same two models, registered under RACE_MODEL without a test-set hash
    race_better: str


RACE_MODEL = "fashion-mnist-race"


def _train_and_register(params, limit: int, race_params) -> tuple[str, str]:
    """Train the baseline in-process, log its model as ``evaluate`` does, and register it twice."""
    train_stage.main("baseline", epochs=1, limit=limit)
    run_id = json.loads(Path("models/baseline/train.json").read_text())["mlflow_run_id"]
    with mlflow.start_run(run_id=run_id):
        serving.log_model(Path("models/baseline/model.keras"), params.base.class_names, params.evaluate.tta_of("baseline"))
    test_sha = file_sha256(Path("data/prepared/test.npz"))
    version = registry.register_version(
        params.registry.model_name, run_id, {"variant": "baseline", "limit": str(limit), "test_sha256": test_sha}
    )
    race_version = registry.register_version(race_params.registry.model_name, run_id, {"limit": str(limit)})
    return version, race_version


def _race_params(params):
    """The race is about the lock, not the rules: any gain promotes, and there is no floor."""
    return dataclasses.replace(
        params, registry=dataclasses.replace(params.registry, model_name=RACE_MODEL, recall_tolerance=1.0, floor=0.0)
    )


@pytest.fixture(scope="module")
def store(prepared_cache, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        no_clients(mp)
        repo = make_project(tmp_path_factory.mktemp("registry") / "repo", tiny_params(("baseline",)))
        checkout_prepared(repo, prepared_cache)
        test_file = repo / "data" / "prepared" / "test.npz"
        x, y = load_split(test_file)
        test_file.unlink()  # a copy of this project's DVC cache entry, not a link to it
        save_split(test_file, x[:2000], y[:2000])
        mp.chdir(repo)
        params = load_params()
        worse, race_worse = _train_and_register(params, 300, _race_params(params))
        better, race_better = _train_and_register(params, 1200, _race_params(params))
        yield Store(repo, params, worse, better, race_worse, race_better)


def _set_aliases(name: str, **aliases: str | None) -> None:
    """Start from exactly these aliases (champion, previous, challenger); the others are removed."""
    client = mlflow_store.client()
    for alias in ("champion", "previous", "challenger"):
        try:
            client.delete_registered_model_alias(name, alias)
        except MlflowException:
            pass
        if aliases.get(alias):
            client.set_registered_model_alias(name, alias, aliases[alias])


def _relaxed(params):
    """Any gain in accuracy promotes: a model trained on 7x the images may still lose a class's recall."""
    return dataclasses.replace(params, registry=dataclasses.replace(params.registry, recall_tolerance=1.0))


@pytest.mark.slow
def test_first_version_is_promoted_when_it_clears_the_floor(store, alert_receiver, monkeypatch):
    name = store.params.registry.model_name
    _set_aliases(name)
    monkeypatch.setenv("FMNIST_ALERTS_URL", alert_receiver.url)
    before = len(alert_receiver.received)
    record = promotion.gate(store.params, Paths(), store.better)
    (alert,) = alert_receiver.wait(before + 1)[before:]  # the decision reaches a person, with its reason
    assert alert["title"] == f"{name}: the gate promoted version {store.better}" and alert["type"] == "success"
    assert alert["message"].startswith(record["reason"])
    assert record["decision"] == "promoted" and record["champion_before"] is None and record["champion_after"] == store.better
    assert record["reason"].startswith("no champion yet; test accuracy")
    assert registry.alias_version(name, "champion") == store.better
    assert registry.alias_version(name, "previous") is None


@pytest.mark.slow
def test_a_worse_challenger_is_not_promoted_and_the_reason_says_why(store, capsys, alert_receiver, monkeypatch):
    name = store.params.registry.model_name
    _set_aliases(name, champion=store.better, challenger=store.worse)
    monkeypatch.setenv("FMNIST_ALERTS_URL", alert_receiver.url)
    before = len(alert_receiver.received)
    fmnist(["promote", "--json"])  # the gate for alias 'challenger', with the rules of params.yaml
    record = json.loads(capsys.readouterr().out)
    (alert,) = alert_receiver.wait(before + 1)[before:]
    assert alert["title"] == f"{name}: the gate rejected version {store.worse}" and alert["type"] == "warning"
    assert record["reason"] in alert["message"]
    monkeypatch.delenv("FMNIST_ALERTS_URL")
    assert not Path("reports/promotion.json").exists()  # the register stage's output: written only through DVC
    assert record["decision"] == "rejected"
    assert record["challenger_version"] == store.worse
    assert record["champion_before"] == record["champion_after"] == store.better
    challenger, champion = record["scores"]["challenger"]["test_accuracy"], record["scores"]["champion"]["test_accuracy"]
    # AMD EPYC: +0.353 (the figures on each CPU: docs/development.md)
    assert trained_figure("promote: 1,200 images over 300, test accuracy gain", champion - challenger) > 0
    assert f"test accuracy {challenger:.4f} vs champion {champion:.4f}" in record["reason"]
    assert "is below the margin 0.0020" in record["reason"]
    fmnist(["promote"])
    assert f"version {store.worse}: rejected: {record['reason']}" in capsys.readouterr().out
    tags = registry.version_tags(name, store.worse)
    assert tags["gate.decision"] == "rejected" and tags["gate.reason"] == record["reason"]
    assert registry.alias_version(name, "champion") == store.better
    assert registry.alias_version(name, "previous") is None


@pytest.mark.slow
def test_promotion_keeps_the_old_champion_as_previous_and_rollback_restores_it(store, capsys):
    name = store.params.registry.model_name
    _set_aliases(name, champion=store.worse)
    record = promotion.gate(_relaxed(store.params), Paths(), store.better)
    assert record["decision"] == "promoted", record["reason"]
    assert (record["champion_before"], record["champion_after"]) == (store.worse, store.better)
    assert registry.alias_version(name, "previous") == store.worse
    assert registry.version_tags(name, store.better)["gate.decision"] == "promoted"

    fmnist(["rollback"])
    assert f"champion is now version {store.worse} (previous: {store.better})" in capsys.readouterr().out
    assert registry.alias_version(name, "champion") == store.worse
    assert registry.alias_version(name, "previous") == store.better  # so a second rollback undoes the first
    assert "restored as champion" in registry.version_tags(name, store.worse)["gate.rollback"]
    fmnist(["rollback"])
    assert registry.alias_version(name, "champion") == store.better


@pytest.mark.slow
def test_every_alias_move_is_recorded_once_and_for_good_and_fmnist_history_prints_it(store, capsys):
    name = store.params.registry.model_name
    _set_aliases(name, champion=store.worse)
    earlier = registry.alias_history(name)
    promotion.gate(_relaxed(store.params), Paths(), store.better)
    fmnist(["rollback"])
    capsys.readouterr()
    history = registry.alias_history(name)
    assert history[: len(earlier)] == earlier  # appended, never rewritten
    moves = [(m["alias"], m["from"], m["to"]) for m in history[len(earlier) :]]
    w, b = store.worse, store.better
    assert moves == [("previous", None, w), ("champion", w, b), ("champion", b, w), ("previous", w, b)]
    new = history[len(earlier) :]
    assert all(m["reason"].startswith(f"gate promoted version {b}: test accuracy") for m in new[:2])
    assert [m["reason"] for m in new[2:]] == [f"rollback to version {w}"] * 2
    assert new[0]["by"].startswith("`fmnist promote` on ") and f"(pid {os.getpid()})" in new[0]["by"]
    assert new[2]["by"].startswith("`fmnist rollback` on ")

    fmnist(["history", "--json"])
    assert json.loads(capsys.readouterr().out) == history
    fmnist(["history", "--alias", "champion"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{name}: ") and all("  champion  " in line for line in lines[1:])
    assert lines[-1].split()[1:5] == ["champion", b, "->", w] and f"rollback to version {w}" in lines[-1]

    model_card = registry.model_description(name)  # the model's card in the UI shows the latest moves too
    assert "## Alias history" in model_card
    assert f"| {new[-1]['at']} | `previous` | {w} | {b} | rollback to version {w} | {new[-1]['by']} |" in model_card


@pytest.mark.slow
def test_rollback_to_goes_back_more_than_one_step_and_only_to_a_former_champion(store, capsys):
    name = store.params.registry.model_name
    run_id = registry.version_run_id(name, store.better)
    tags = {k: v for k, v in registry.version_tags(name, store.better).items() if k in ("variant", "test_sha256")}
    third, never = (registry.register_version(name, run_id, tags) for _ in range(2))  # copies of `better`
    any_gain = dataclasses.replace(
        store.params, registry=dataclasses.replace(store.params.registry, margin=-1.0, recall_tolerance=1.0)
    )
    _set_aliases(name, champion=store.worse)
    for version in (store.better, third):  # worse -> better -> third
        assert promotion.gate(any_gain, Paths(), version)["decision"] == "promoted"

    fmnist(["rollback", "--to", store.worse])  # two steps back
    assert f"champion is now version {store.worse} (previous: {third})" in capsys.readouterr().out
    assert registry.alias_version(name, "champion") == store.worse and registry.alias_version(name, "previous") == third
    assert f"**restored as champion**, replacing version {third}." in registry.version_description(name, store.worse)
    assert f"**rolled back**: version {store.worse} is champion again" in registry.version_description(name, third)
    last = registry.alias_history(name)[-2:]
    assert [(m["alias"], m["from"], m["to"]) for m in last] == [
        ("champion", third, store.worse),
        ("previous", store.better, third),
    ]

    for target, message in ((never, "was never champion"), (store.worse, "is the champion already")):
        with pytest.raises(SystemExit) as exited:
            fmnist(["rollback", "--to", target])
        assert exited.value.code == 2 and f"version {target} {message}" in capsys.readouterr().err
    assert registry.alias_version(name, "champion") == store.worse  # refusals move nothing


@pytest.mark.slow
def test_rollback_without_a_previous_version_fails_clearly(store, capsys):
    _set_aliases(store.params.registry.model_name, champion=store.better)
    with pytest.raises(SystemExit) as exited:
        fmnist(["rollback"])
    assert exited.value.code == 2
    assert "has no 'previous' version to roll back to" in capsys.readouterr().err
    assert registry.alias_version(store.params.registry.model_name, "champion") == store.better


@pytest.mark.slow
def test_gate_refuses_a_test_set_other_than_the_one_the_version_was_evaluated_on(store, tmp_path):
    x, y = load_split(Path("data/prepared/test.npz"))
    other = Paths(tmp_path)
    save_split(other.split("test"), x[:-1], y[:-1])
    with pytest.raises(RegistryError, match="changed since version"):
        promotion.gate(store.params, other, store.worse)


# --- integrity of what the registry serves --------------------------------------------------------


def _register_copy(store: Store, tmp_path: Path, tamper, tags: dict[str, str] | None = None) -> str:
    """A new version whose files are a copy of ``better``'s, changed by ``tamper(folder)``."""
    name = store.params.registry.model_name
    original = mlflow_client(store.repo).get_model_version(name, store.better)
    folder = tmp_path / "model"
    shutil.copytree(mlflow.artifacts.download_artifacts(f"models:/{name}/{store.better}"), folder)
    tamper(folder)
    tags = {"model_sha256": original.tags["model_sha256"]} if tags is None else tags
    return mlflow_client(store.repo).create_model_version(name, str(folder), tags=tags).version


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _tamper_and_cover_tracks(folder: Path) -> None:
    """Change the weights and rewrite the hash stored beside them, as an attacker with write access would."""
    keras_file, meta = folder / "artifacts" / "model.keras", folder / "artifacts" / "serving.json"
    _flip_a_byte(keras_file)
    meta.write_text(json.dumps(json.loads(meta.read_text()) | {"sha256": file_sha256(keras_file)}))


@pytest.mark.slow
def test_version_tag_is_the_sha256_of_the_served_model_file(store):
    name = store.params.registry.model_name
    for version in (store.worse, store.better):
        local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version}"))
        assert registry.version_tags(name, version)["model_sha256"] == file_sha256(local / "artifacts" / "model.keras")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda folder: _flip_a_byte(folder / "artifacts" / "model.keras"), "does not match its model_sha256 tag"),
        (_tamper_and_cover_tracks, "does not match its model_sha256 tag"),
    ],
    ids=["model file changed", "model file and its stored hash changed"],
)
def test_a_tampered_model_is_refused_and_never_promoted(store, tmp_path, tamper, message):
    name = store.params.registry.model_name
    _set_aliases(name, champion=store.worse)
    version = _register_copy(store, tmp_path, tamper)
    with pytest.raises(RegistryError, match=message):
        registry.load_version(name, version)
    with pytest.raises(RegistryError, match=message):
        promotion.gate(_relaxed(store.params), Paths(), version)
    assert registry.alias_version(name, "champion") == store.worse


@pytest.mark.slow
def test_versions_without_a_hash_or_that_do_not_exist_are_refused(store, tmp_path):
    name = store.params.registry.model_name
    version = _register_copy(store, tmp_path, lambda folder: None, tags={})
    with pytest.raises(RegistryError, match="no model_sha256 tag"):
        registry.load_version(name, version)
    with pytest.raises(RegistryError, match="version 999: cannot be read from the registry at sqlite:.*not found"):
        registry.load_version(name, "999")
    assert registry.load_version(name, store.better).predict(load_split(Path("data/prepared/test.npz"))[0][:2]) is not None


# --- two promotions at once ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def racers(store, tmp_path_factory):
    """Two long-lived gate processes on this checkout, one per challenger, that start each round at the same moment.

    Both start from no champion, so both clear the floor. The worse one holds its decision for
    ``HOLD_S`` seconds before moving the aliases (patched in by ``race.WORKER``), the better one not at
    all: without the lock, both read "no champion" within milliseconds, both promote, and the
    worse one writes last, every time. With the lock, whichever goes second sees the first's
    result and compares against it, so the better model ends as champion whatever the order.
    """
    sides = [(store.repo, store.race_worse, HOLD_S), (store.repo, store.race_better, 0.0)]
    with race.racers(tmp_path_factory.mktemp("race"), sides, RACE_MODEL, ".", {}) as run:
        yield lambda mode: run({"lock": mode == "lock"})


@pytest.mark.slow
def test_racing_promotions_end_with_the_better_model_as_champion_every_time(store, racers):
    rounds, first_in = repeats(2, 50), Counter()
    for _ in range(rounds):
        champion, records = racers("lock")
        assert champion == store.race_better, records
        worse, better = (r["champion_before"] for r in records)  # the second in saw the first's result
        assert (worse, better) in {(None, store.race_worse), (store.race_better, None)}, records
        first_in["better" if better is None else "worse"] += 1
    record_reliability(
        "promotion race, with the lock",
        {
            "rounds": rounds,
            "better_ended_champion": rounds,
            "better_locked_first": first_in["better"],
            "worse_locked_first": first_in["worse"],
        },
    )


@pytest.mark.slow
def test_without_the_lock_the_race_is_real_and_the_worse_model_wins(store, racers):
    rounds = repeats(2, 10)
    for _ in range(rounds):
        champion, records = racers("nolock")
        assert champion == store.race_worse, records  # the stale read: both promoted over "no champion"
        assert [r["champion_before"] for r in records] == [None, None]
        assert [r["decision"] for r in records] == ["promoted", "promoted"]
    record_reliability("promotion race, lock removed (negative control)", {"rounds": rounds, "worse_ended_champion": rounds})


# --- a promotion killed half-way -----------------------------------------------------------------

KILL_WORKER = textwrap.dedent(
    """
    # A promotion of version argv[1] that announces when its imports are done and the gate starts.
    import dataclasses, sys
    from pipeline.adapters.paths import Paths
    from pipeline.core.config import load_params
    from pipeline.services import promotion

    params = load_params()
    params = dataclasses.replace(params, registry=dataclasses.replace(params.registry, recall_tolerance=1.0))
    print("gate", flush=True)
    promotion.gate(params, Paths(), sys.argv[1])
    """
)


def _start_promotion(repo: Path, version: str) -> tuple[subprocess.Popen, float]:
    """Start KILL_WORKER; returns it once it reaches the gate, and the moment it did."""
    cmd = [sys.executable, "-c", KILL_WORKER, version]
    proc = subprocess.Popen(
        cmd, cwd=repo, env=tiny_repro.project_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert proc.stdout.readline().strip() == "gate", f"promotion exited with {proc.wait()} before the gate"
    return proc, time.monotonic()


@pytest.mark.slow
def test_a_promotion_killed_at_any_point_leaves_a_champion_that_loads_and_matches_its_hash(store):
    name, rng = store.params.registry.model_name, random.Random(7)
    x = load_split(Path("data/prepared/test.npz"))[0][:4]
    _set_aliases(name, champion=store.worse)
    proc, started = _start_promotion(store.repo, store.better)
    assert proc.wait(120) == 0
    gate_seconds = time.monotonic() - started  # the span a kill can land in
    assert registry.alias_version(name, "champion") == store.better

    rounds, outcomes = repeats(2, 30), Counter()
    for _ in range(rounds):
        _set_aliases(name, champion=store.worse)
        proc, started = _start_promotion(store.repo, store.better)
        time.sleep(max(0.0, started + rng.uniform(0, gate_seconds) - time.monotonic()))
        proc.kill()
        proc.wait()
        champion, previous = registry.alias_version(name, "champion"), registry.alias_version(name, "previous")
        assert (champion, previous) in {(store.worse, None), (store.worse, store.worse), (store.better, store.worse)}
        assert registry.load_version(name, champion).predict(x)["class_index"].shape == (4,)  # loads; hash matches its tag
        outcomes["old champion kept" if champion == store.worse else "new champion in place"] += 1

    _set_aliases(name, champion=store.worse)  # the killed promotions left no stale lock behind
    assert promotion.gate(_relaxed(store.params), Paths(), store.better)["decision"] == "promoted"
    record_reliability(
        "promotion killed at a random point", {"kills": rounds, "gate_seconds": round(gate_seconds, 2), **outcomes}
    )
