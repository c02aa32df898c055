"""params.yaml validation: every malformed file is rejected with its key path, before any work."""

from __future__ import annotations

import copy
import dataclasses
import sqlite3
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, dvc, tiny_params, write_params

from pipeline.adapters.paths import repo_root
from pipeline.core.config import ARCHITECTURES, Params, load_params, parse_params
from pipeline.core.errors import ConfigError

VALID = yaml.safe_load((ROOT / "params.yaml").read_text())
VALID["variants"]["aug"] = {"architecture": "tutorial_cnn", "batch_size": 64, "augment": {"shift": 1}}  # nested overrides


def _set(path: str, value):
    """A mutation that sets the dotted ``path`` of the params mapping to ``value``."""

    def mutate(p: dict) -> None:
        *parents, last = path.split(".")
        for key in parents:
            p = p[key]
        p[last] = value

    return mutate


def _drop(path: str):
    def mutate(p: dict) -> None:
        *parents, last = path.split(".")
        for key in parents:
            p = p[key]
        del p[last]

    return mutate


# (id, mutation of the valid params or the whole file's text, what the message must contain)
MALFORMED = [
    # missing keys and sections
    ("missing-section-base", _drop("base"), "base: missing section"),
    ("missing-section-variants", _drop("variants"), "variants: missing section"),
    ("missing-base.seed", _drop("base.seed"), "base.seed: missing"),
    ("missing-train.epochs", _drop("train.epochs"), "train.epochs: missing"),
    ("missing-prepare.val_size", _drop("prepare.val_size"), "prepare.val_size: missing"),
    ("variant-missing-architecture", _drop("variants.aug.architecture"), "variants.aug.architecture: missing"),
    # unknown keys, at every level
    ("unknown-section", _set("trian", {"epochs": 3}), "trian: unknown section"),
    ("unknown-base-key", _set("base.sed", 1), "base.sed: unknown key"),
    ("unknown-data-key", _set("data.mirror", "x"), "data.mirror: unknown key"),
    ("unknown-prepare-key", _set("prepare.val", 10), "prepare.val: unknown key"),
    ("unknown-train-key", _set("train.epoch", 3), "train.epoch: unknown key"),
    ("unknown-train.augment-key", _set("train.augment.rotate", 10), "train.augment.rotate: unknown key"),
    ("unknown-variant-key", _set("variants.baseline.lr", 0.1), "variants.baseline.lr: unknown key"),
    ("unknown-variant-augment-key", _set("variants.aug.augment.rotate", 5), "variants.aug.augment.rotate: unknown key"),
    ("unknown-tracking-key", _set("tracking.uri", "x"), "tracking.uri: unknown key"),
    ("unknown-registry-key", _set("registry.margn", 0.1), "registry.margn: unknown key"),
    ("serve-poll-not-positive", _set("serve.poll_s", 0), "serve.poll_s: expected a positive number, got 0"),
    ("unknown-serve-key", _set("serve.poll", 5), "serve.poll: unknown key; expected one of poll_s, log, sample_rate"),
    ("serve-sample-rate-above-one", _set("serve.sample_rate", 1.5), "serve.sample_rate: expected a number in [0, 1], got 1.5"),
    # tune: studies over a variant's settings
    ("tune-unknown-key", _set("tune.fast94.trails", 5), "tune.fast94.trails: unknown key"),
    ("tune-unknown-variant", _set("tune.fast94.variant", "resnet"), "tune.fast94.variant: expected one of the variants"),
    ("tune-pruner", _set("tune.fast94.pruner", "asha"), "tune.fast94.pruner: expected one of median, hyperband, none"),
    ("tune-space-key", _set("tune.fast94.space.lr", {"log": [0.001, 0.01]}), "tune.fast94.space.lr: unknown key"),
    ("tune-space-kind", _set("tune.fast94.space.dropout", {"normal": [0, 1]}), "tune.fast94.space.dropout: expected one of"),
    (
        "tune-empty-range",
        _set("tune.fast94.space.dropout", {"uniform": [0.3, 0.1]}),
        "tune.fast94.space.dropout.uniform: empty range [0.3, 0.1]",
    ),
    (
        "tune-range-out-of-bounds",
        _set("tune.fast94.space.dropout", {"uniform": [0.0, 1.5]}),
        "tune.fast94.space.dropout.uniform: expected a number in [0, 1), got 1.5",
    ),
    (
        "tune-log-from-zero",
        _set("tune.best.space.weight_decay", {"log": [0, 0.001]}),
        "tune.best.space.weight_decay.log: expected a positive low end",
    ),
    ("tune-int-on-a-float", _set("tune.fast94.space.dropout", {"int": [0, 1]}), "tune.fast94.space.dropout.int: expected log"),
    (
        "tune-choice-of-the-wrong-type",
        _set("tune.fast94.space.batch_size", {"choice": [128, "big"]}),
        "tune.fast94.space.batch_size.choice[1]: expected an integer, got 'big'",
    ),
    ("tune-reference-key", _set("tune.fast94.reference", {"epoch": 11}), "tune.fast94.reference.epoch: unknown key"),
    ("tune-reference-value", _set("tune.fast94.reference", {"epochs": -1}), "tune.fast94.reference.epochs: expected a positive"),
    ("tune-confirm-seeds-zero", _set("tune.fast94.confirm_seeds", 0), "tune.fast94.confirm_seeds: expected a positive integer"),
    (
        "tune-choice-unknown-architecture",
        _set("tune.best.space.architecture", {"choice": ["wide_cnn", "resnet"]}),
        "tune.best.space.architecture.choice: unknown architecture 'resnet'",
    ),
    # wrong types
    ("epochs-string", _set("train.epochs", "ten"), "train.epochs: expected an integer, got 'ten'"),
    ("epochs-float", _set("train.epochs", 2.5), "train.epochs: expected an integer, got 2.5"),
    ("epochs-bool", _set("train.epochs", True), "train.epochs: expected an integer, got True"),
    ("lr-string", _set("train.learning_rate", "fast"), "train.learning_rate: expected a finite number"),
    ("seed-float", _set("base.seed", 1.5), "base.seed: expected an integer"),
    ("flip-string", _set("train.augment.flip", "yes"), "train.augment.flip: expected true or false"),
    ("augment-not-mapping", _set("train.augment", 3), "train.augment: expected a mapping"),
    ("class-names-string", _set("base.class_names", "T-shirt"), "base.class_names: expected a list"),
    ("mirrors-string", _set("data.mirrors", "http://example.org/"), "data.mirrors: expected a list"),
    ("base-list", _set("base", [1, 2]), "base: expected a mapping"),
    ("variants-list", _set("variants", ["baseline"]), "variants: expected a non-empty mapping"),
    ("variant-null", _set("variants.baseline", None), "variants.baseline: expected a mapping"),
    ("schedule-unknown", _set("train.schedule", "linear"), "train.schedule: expected one of constant, cosine, onecycle"),
    ("precision-unknown", _set("train.precision", "float16"), "train.precision: expected one of float32, mixed_bfloat16"),
    # negative, zero and out-of-range sizes
    ("epochs-negative", _set("train.epochs", -3), "train.epochs: expected a positive integer, got -3"),
    ("epochs-zero", _set("train.epochs", 0), "train.epochs: expected a positive integer, got 0"),
    ("variant-epochs-negative", _set("variants.baseline.epochs", -3), "variants.baseline.epochs: expected a positive integer"),
    ("batch-size-zero", _set("train.batch_size", 0), "train.batch_size: expected a positive integer"),
    (
        "variant-batch-size-negative",
        _set("variants.aug.batch_size", -128),
        "variants.aug.batch_size: expected a positive integer",
    ),
    ("val-size-negative", _set("prepare.val_size", -5000), "prepare.val_size: expected a positive integer"),
    ("val-size-zero", _set("prepare.val_size", 0), "prepare.val_size: expected a positive integer"),
    ("reserve-negative", _set("prepare.reserve", -1), "prepare.reserve: expected a non-negative integer"),
    ("lr-zero", _set("train.learning_rate", 0), "train.learning_rate: expected a positive number"),
    ("dropout-one", _set("train.dropout", 1.0), "train.dropout: expected a number in [0, 1)"),
    ("label-smoothing-negative", _set("train.label_smoothing", -0.1), "train.label_smoothing: expected a number in [0, 1)"),
    ("weight-decay-negative", _set("train.weight_decay", -1e-4), "train.weight_decay: expected a non-negative number"),
    ("shift-negative", _set("train.augment.shift", -2), "train.augment.shift: expected a non-negative integer"),
    ("patience-zero", _set("train.patience", 0), "train.patience: expected a positive integer"),
    ("ema-one", _set("train.ema", 1.0), "train.ema: expected a number in [0, 1)"),
    ("bn-momentum-negative", _set("variants.aug.bn_momentum", -0.5), "variants.aug.bn_momentum: expected a number in [0, 1)"),
    ("erase-one", _set("train.augment.erase", 1), "train.augment.erase: expected a number in [0, 1)"),
    ("whiten-string", _set("train.whiten", "yes"), "train.whiten: expected true or false"),
    ("head-negative", _set("variants.aug.head", -64), "variants.aug.head: expected a non-negative integer"),
    ("optimizer-unknown", _set("train.optimizer", "sgd"), "train.optimizer: expected one of adam, nesterov, got 'sgd'"),
    ("lookahead-one", _set("train.lookahead", 1.0), "train.lookahead: expected a number in [0, 1)"),
    (
        "alternate-flips-without-flips",
        _set("variants.baseline.augment", {"alternate_flips": True}),
        "variants.baseline.augment.alternate_flips: expected false, since variants.baseline.augment.flip is false",
    ),
    ("limit-negative", _set("train.limit", -1), "train.limit: expected a non-negative integer"),
    ("seed-negative", _set("base.seed", -1), "base.seed: expected a non-negative integer"),
    ("timeout-zero", _set("data.timeout", 0), "data.timeout: expected a positive number"),
    ("floor-above-one", _set("registry.floor", 1.5), "registry.floor: expected a number in [0, 1)"),
    (
        "unknown-tta",
        _set("evaluate.tta.wide_aug", "rotate"),
        "evaluate.tta.wide_aug: expected one of none, flip, flip+shift, got 'rotate'",
    ),
    (
        "tta-unknown-variant",
        _set("evaluate.tta.resnet", "flip"),
        "evaluate.tta.resnet: unknown variant; expected one of the variants: baseline, dropout",
    ),
    ("tta-not-a-mapping", _set("evaluate.tta", "flip"), "evaluate.tta: expected a mapping of variant name to one of none"),
    (
        "tta-flip-without-flips",
        _set("evaluate.tta.baseline", "flip"),
        "evaluate.tta.baseline: expected none, since variants.baseline.augment.flip is false: 'flip' averages",
    ),
    ("margin-negative", _set("registry.margin", -0.01), "registry.margin: expected a non-negative number"),
    # NaN and infinity
    ("lr-nan", _set("train.learning_rate", float("nan")), "train.learning_rate: expected a finite number, got nan"),
    ("lr-inf", _set("train.learning_rate", float("inf")), "train.learning_rate: expected a finite number, got inf"),
    ("variant-dropout-nan", _set("variants.aug.dropout", float("nan")), "variants.aug.dropout: expected a finite number"),
    ("timeout-nan", _set("data.timeout", float("nan")), "data.timeout: expected a finite number"),
    # empty or nonsensical collections and names
    ("mirrors-empty", _set("data.mirrors", []), "data.mirrors: expected at least one mirror"),
    ("class-names-nine", _set("base.class_names", VALID["base"]["class_names"][:9]), "base.class_names: expected 10"),
    ("class-names-duplicate", _set("base.class_names", ["Bag"] * 10), "base.class_names: expected 10 distinct names"),
    ("variants-empty", _set("variants", {}), "variants: expected a non-empty mapping"),
    ("experiment-empty", _set("tracking.experiment", ""), "tracking.experiment: expected a non-empty string"),
    ("variant-name-with-space", _set("variants.my variant", {"architecture": "tutorial_cnn"}), "variants.my variant: invalid"),
    ("variant-name-path", lambda p: p["variants"].update({"../x": {"architecture": "tutorial_cnn"}}), "variants.../x: invalid"),
    # unknown architecture
    ("architecture-unknown", _set("variants.baseline.architecture", "resnet50"), "variants.baseline.architecture: unknown"),
    ("architecture-not-string", _set("variants.baseline.architecture", ["tutorial_cnn"]), "variants.baseline.architecture"),
    # not YAML, or not a mapping
    ("invalid-yaml", "base: {seed: 1\ntrain: [", "params.yaml: invalid YAML"),
    ("invalid-yaml-tab", "base:\n\tseed: 1\n", "params.yaml: invalid YAML"),
    ("duplicate-key", "base:\n  seed: 1\n  seed: 2\n", "duplicate key 'seed'"),
    ("empty-file", "", "params: expected a mapping at the top level, got NoneType"),
    ("top-level-list", "- base\n- train\n", "params: expected a mapping at the top level, got list"),
    ("top-level-scalar", "42\n", "params: expected a mapping at the top level, got int"),
]


def _write(tmp_path: Path, case) -> Path:
    path = tmp_path / "params.yaml"
    if isinstance(case, str):
        path.write_text(case)
    else:
        params = copy.deepcopy(VALID)
        case(params)
        path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def test_at_least_thirty_malformed_variants():
    assert len(MALFORMED) >= 30
    assert len({case_id for case_id, _, _ in MALFORMED}) == len(MALFORMED)


@pytest.mark.parametrize(("case", "expected"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_params_are_rejected_with_the_key_path(tmp_path, case, expected):
    path = _write(tmp_path, case)
    with pytest.raises(ConfigError) as err:
        load_params(path)
    message = str(err.value)
    assert expected in message
    assert any(word in message for word in ("expected", "missing", "invalid YAML", "duplicate key"))


def test_unknown_architecture_lists_the_valid_names(tmp_path):
    path = _write(tmp_path, _set("variants.baseline.architecture", "resnet50"))
    with pytest.raises(ConfigError, match="resnet50") as err:
        load_params(path)
    assert all(name in str(err.value) for name in ARCHITECTURES)


def test_missing_file_names_it(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")


def test_repository_params_load_into_frozen_typed_objects():
    params = load_params(ROOT / "params.yaml")
    assert isinstance(params, Params)
    assert len(params.base.class_names) == 10
    assert params.variant("baseline").architecture == "tutorial_cnn"
    assert params.variant("baseline").epochs == params.train.epochs  # inherited default
    assert all(cfg.architecture in ARCHITECTURES for cfg in params.variants.values())
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.train.epochs = 1  # type: ignore[misc]


def test_variant_overrides_merge_with_the_shared_defaults():
    raw = copy.deepcopy(VALID)
    raw["train"]["augment"] = {"shift": 1, "flip": True}
    raw["variants"]["aug"]["augment"] = {"shift": 3}  # a partial block overrides key by key
    params = parse_params(raw)
    assert params.variant("aug").augment.shift == 3
    assert params.variant("aug").augment.flip is True
    assert params.variant("aug").batch_size == 64
    assert params.variant("baseline").augment.shift == 1
    assert params.variant("baseline").batch_size == VALID["train"]["batch_size"]


def test_unknown_variant_lists_the_defined_ones():
    params = parse_params(copy.deepcopy(VALID))
    with pytest.raises(ConfigError, match="unknown variant 'nope'") as err:
        params.variant("nope")
    assert all(name in str(err.value) for name in VALID["variants"])


def test_scientific_notation_without_a_dot_is_a_number(tmp_path):
    """PyYAML alone reads ``1e-3`` as a string; DVC (YAML 1.2) reads it as a number; so do we."""
    text = yaml.safe_dump(VALID, sort_keys=False).replace("learning_rate: 0.001", "learning_rate: 1e-3")
    assert "learning_rate: 1e-3" in text
    (tmp_path / "params.yaml").write_text(text)
    assert load_params(tmp_path / "params.yaml").train.learning_rate == pytest.approx(1e-3)


def test_tiny_params_are_valid():
    params = parse_params(tiny_params())
    assert set(params.variants) == {"baseline", "dropout"}
    assert all(cfg.epochs == 1 and cfg.limit == 2000 for cfg in params.variants.values())


def test_repo_root_from_inside_a_dvc_temp_experiment(tmp_path):
    inside = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "run-1" / "sub"
    inside.mkdir(parents=True)
    assert repo_root(inside) == (tmp_path / "repo").resolve()
    assert repo_root(tmp_path) == tmp_path.resolve()


# --- end to end: `dvc repro` stops before any stage does work --------------------------------


def _bad_tiny(mutation) -> dict:
    params = tiny_params()
    mutation(params)
    return params


def _files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mutation", "key_path"),
    [
        (_set("train.epoch", 3), "train.epoch: unknown key"),
        (_set("variants.dropout.batch_size", "big"), "variants.dropout.batch_size: expected an integer"),
        (_set("variants.baseline.epochs", -3), "variants.baseline.epochs: expected a positive integer, got -3"),
    ],
    ids=["unknown-key", "wrong-type", "negative-epochs"],
)
def test_dvc_repro_fails_before_any_work(project, mutation, key_path):
    write_params(project, _bad_tiny(mutation))
    proc = dvc(project, "repro", check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert key_path in output
    assert _files_under(project / "data") == [project / "data" / ".gitignore", project / "data" / "accepted" / ".gitkeep"]
    assert not (project / "models").exists()
    assert not (project / "reports").exists()
    assert not (project / "dvc.lock").exists()
    db = project / "mlflow.db"
    if db.exists():  # nothing may have been logged
        with sqlite3.connect(db) as conn:
            assert conn.execute("select count(*) from runs").fetchone()[0] == 0
