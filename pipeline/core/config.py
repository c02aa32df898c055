"""Typed, frozen configuration loaded once from ``params.yaml``.

Every stage calls :func:`load_params` first, so a malformed file stops the pipeline
before any work is done, with the key path and the expected value in the message.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from pipeline.core.errors import ConfigError

ARCHITECTURES = ("tutorial_cnn", "slim_cnn", "bn_cnn", "wide_cnn", "wide_bn_cnn", "deep_cnn")


def _positive(v: Any) -> str | None:
    return None if v > 0 else "a positive {kind}"


def _non_negative(v: Any) -> str | None:
    return None if v >= 0 else "a non-negative {kind}"


def _fraction(v: Any) -> str | None:
    return None if 0 <= v < 1 else "a {kind} in [0, 1)"


def _probability(v: Any) -> str | None:
    return None if 0 <= v <= 1 else "a {kind} in [0, 1]"


def _check(fn):
    return field(metadata={"check": fn})


def _check_default(fn, default):
    return field(default=default, metadata={"check": fn})


@dataclass(frozen=True)
class Base:
    seed: int = _check(_non_negative)
    class_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class Data:
    mirrors: tuple[str, ...] = ()
    timeout: float = _check_default(_positive, 20.0)


@dataclass(frozen=True)
class Prepare:
    val_size: int = _check(_positive)
    reserve: int = _check_default(_non_negative, 0)


@dataclass(frozen=True)
class Augment:
    """Per-image training augmentation (``pipeline/core/training.py`` draws it)."""

    shift: int = _check_default(_non_negative, 0)  # random translation by up to this many pixels
    flip: bool = False  # random left-right mirror
    alternate_flips: bool = False  # with flip: each image mirrored in every other epoch, not at random
    erase: float = _check_default(_fraction, 0.0)  # probability of blanking a random rectangle of an image


@dataclass(frozen=True)
class Train:
    """Training settings: the shared defaults, or one variant with its overrides applied."""

    epochs: int = _check(_positive)
    batch_size: int = _check(_positive)
    learning_rate: float = _check(_positive)
    schedule: Literal["constant", "cosine", "onecycle"] = "constant"
    weight_decay: float = _check_default(_non_negative, 0.0)
    label_smoothing: float = _check_default(_fraction, 0.0)
    dropout: float = _check_default(_fraction, 0.0)
    augment: Augment = field(default_factory=Augment)
    precision: Literal["float32", "mixed_bfloat16"] = "float32"
    patience: int = _check_default(_positive, 3)
    limit: int = _check_default(_non_negative, 0)
    architecture: str = ""
    ema: float = _check_default(_fraction, 0.0)  # momentum of an exponential moving average of the weights; 0: off
    bn_momentum: float = _check_default(_fraction, 0.99)  # batch norm's moving statistics (architectures with it)
    whiten: bool = False  # a frozen first conv that whitens 3x3 patches, set from the training images
    head: int = _check_default(_non_negative, 0)  # units of the dense head; 0: the architecture's own (64 or 128)
    optimizer: Literal["adam", "nesterov"] = "adam"  # nesterov: SGD with Nesterov momentum 0.9
    lookahead: float = _check_default(_fraction, 0.0)  # Lookahead's slow-weights step (0: off), every 16 steps


TTA_MODES = ("none", "flip", "flip+shift")  # test-time augmentation; pipeline/core/inference.py makes the views


@dataclass(frozen=True)
class Evaluate:
    """How ``evaluate`` scores each variant, and so how its served model predicts (the same function).

    ``tta`` maps a variant to its test-time augmentation; a variant not listed gets ``none``.
    """

    tta: dict[str, str] = field(default_factory=dict)

    def tta_of(self, variant: str) -> str:
        return self.tta.get(variant, "none")


def _build_evaluate(raw: Any, variants: dict[str, Train]) -> Evaluate:
    """``evaluate:`` checked against the variants: known names, known modes, and flips only for a model trained with them."""
    raw = {} if raw is None else raw
    if not isinstance(raw, dict) or set(map(str, raw)) - {"tta"}:
        raise ConfigError(f"evaluate: expected a mapping with the key tta, got {raw!r}")
    tta = raw.get("tta") or {}
    if not isinstance(tta, dict):
        raise ConfigError(f"evaluate.tta: expected a mapping of variant name to one of {', '.join(TTA_MODES)}, got {tta!r}")
    for name, mode in tta.items():
        key = f"evaluate.tta.{name}"
        if name not in variants:
            raise ConfigError(f"{key}: unknown variant; expected one of the variants: {', '.join(variants)}")
        if mode not in TTA_MODES:
            raise ConfigError(f"{key}: expected one of {', '.join(TTA_MODES)}, got {mode!r}")
        if "flip" in mode and not variants[name].augment.flip:
            raise ConfigError(
                f"{key}: expected none, since variants.{name}.augment.flip is false: {mode!r} averages over mirrored "
                "images, which a model that never saw them gets wrong (the tutorial's model: 92.6% -> 85.5% on validation)"
            )
    return Evaluate(tta={str(k): str(v) for k, v in tta.items()})


@dataclass(frozen=True)
class Tracking:
    experiment: str = "fashion-mnist"


@dataclass(frozen=True)
class Registry:
    model_name: str = "fashion-mnist-cnn"
    margin: float = _check_default(_non_negative, 0.002)
    recall_tolerance: float = _check_default(_non_negative, 0.02)
    floor: float = _check_default(_fraction, 0.90)


def _cron(v: str) -> str | None:
    return None if len(v.split()) == 5 else "a cron expression of 5 fields (minute hour day month weekday)"


@dataclass(frozen=True)
class Retrain:
    """Scheduled retraining: when (cron, UTC), what counts as drift, retries of transient failures, fan-out."""

    cron: str = _check_default(_cron, "0 3 * * 1")
    psi_threshold: float = _check_default(_positive, 0.2)
    class_shift_threshold: float = _check_default(_positive, 0.1)
    reference_size: int = _check_default(_positive, 5000)
    retries: int = _check_default(_non_negative, 2)
    retry_delay: float = _check_default(_non_negative, 30.0)
    fan_out: bool = False


@dataclass(frozen=True)
class Serve:
    """``fmnist serve``: how often a server that follows the champion alias checks whether it moved, and its prediction log."""

    poll_s: float = _check_default(_positive, 10.0)
    log: bool = True  # a record per served image in data/predictions/
    sample_rate: float = _check_default(_probability, 0.01)  # the share of served images the log keeps as pixels


@dataclass(frozen=True)
class Monitor:
    """``fmnist monitor``: the window of served predictions it checks against the champion's training reference (with
    ``retrain``'s drift thresholds), the confidence drop that counts as drift, what it exports to label, and its schedule."""

    experiment: str = "fashion-mnist-monitoring"  # one MLflow run per window checked
    window_h: float = _check_default(_positive, 24.0)  # hours of the prediction log, up to now
    min_images: int = _check_default(_positive, 200)  # fewer served images in the window: too few to judge
    confidence_drop_threshold: float = _check_default(_probability, 0.05)  # mean top probability, reference minus live
    low_confidence: float = _check_default(_probability, 0.5)  # sampled images below this top probability go to label
    export_max: int = _check_default(_positive, 500)  # images exported to data/to-label/ per window, at most
    cron: str = _check_default(_cron, "0 * * * *")  # UTC: the deployment's schedule (keep prefect.yaml's the same)


SPACE_KINDS = ("log", "uniform", "int", "choice")  # log-uniform and uniform floats, integers, a list of values


@dataclass(frozen=True)
class Dimension:
    """One setting a study searches: ``kind`` (one of :data:`SPACE_KINDS`) over ``values`` ((low, high), or the choices)."""

    kind: str
    values: tuple


@dataclass(frozen=True)
class Study:
    """``tune.<study>``: an Optuna study over one variant's train settings (``fmnist tune``, docs/tuning.md)."""

    variant: str
    space: dict[str, Dimension]  # dotted train keys (``augment.erase``) -> what is searched
    trials: int = _check_default(_positive, 20)  # complete or pruned trials the study ends with
    timeout_s: float = _check_default(_non_negative, 0.0)  # stop starting trials after this long (0: no limit)
    max_epochs: int = _check_default(_non_negative, 0)  # a cap on each trial's epochs (0: the variant's own)
    max_fit_s: float = _check_default(_non_negative, 0.0)  # a cap on each trial's fit seconds (0: none)
    pruner: Literal["median", "hyperband", "none"] = "median"  # on the per-epoch validation accuracy
    seed: int = _check_default(_non_negative, 0)  # the TPE sampler's seed
    confirm_seeds: int = _check_default(_positive, 3)  # `fmnist tune --confirm`: seeds the search never used
    reference: dict[str, Any] = field(default_factory=dict)  # the hand-tuned settings compared: the variant's, with these


def _train_keys(train: Train) -> dict[str, tuple[Any, Any]]:
    """Every key a study may search, dotted (``augment.erase``) -> (its annotation, its check)."""
    keys = {}
    for cls, prefix in ((Train, ""), (Augment, "augment.")):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name not in ("augment", "limit"):  # limit: a trial trains on what `fmnist tune --limit` says
                keys[prefix + f.name] = (hints[f.name], f.metadata.get("check"))
    return keys


def _checked_value(value: Any, tp: Any, check, path: str) -> Any:
    value = _convert(value, tp, path)
    problem = check(value) if check else None
    if problem:
        raise ConfigError(f"{path}: expected {problem.format(kind=_kind(tp))}, got {value!r}")
    return value


def _build_dimension(raw: Any, tp: Any, check, path: str) -> Dimension:
    if not isinstance(raw, dict) or len(raw) != 1 or next(iter(raw)) not in SPACE_KINDS:
        raise ConfigError(f"{path}: expected one of {', '.join(f'{{{k}: [...]}}' for k in SPACE_KINDS)}, got {raw!r}")
    kind, values = next(iter(raw.items()))
    if kind == "choice":
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{path}.choice: expected a non-empty list of values, got {values!r}")
        if path.endswith(".architecture"):
            unknown = [v for v in values if v not in ARCHITECTURES]
            if unknown:
                raise ConfigError(
                    f"{path}.choice: unknown architecture {unknown[0]!r}; expected one of {', '.join(ARCHITECTURES)}"
                )
        return Dimension(kind, tuple(_checked_value(v, tp, check, f"{path}.choice[{i}]") for i, v in enumerate(values)))
    wanted = int if kind == "int" else float
    if tp is not wanted:
        hint = "int" if tp is int else "choice" if tp is not float else "log or uniform"
        raise ConfigError(
            f"{path}.{kind}: expected {hint} for a {_kind(tp) if tp in (int, float, bool, str) else 'choice'} setting"
        )
    if not isinstance(values, list) or len(values) != 2:
        raise ConfigError(f"{path}.{kind}: expected [low, high], got {values!r}")
    low, high = (_checked_value(v, tp, check, f"{path}.{kind}") for v in values)
    if (kind == "int" and low > high) or (kind != "int" and low >= high):
        raise ConfigError(f"{path}.{kind}: empty range [{low}, {high}]; expected low below high")
    if kind == "log" and low <= 0:
        raise ConfigError(f"{path}.log: expected a positive low end for a log-uniform range, got {low}")
    return Dimension(kind, (low, high))


def _build_tune(raw: Any, variants: dict[str, Train], train: Train) -> dict[str, Study]:
    """``tune:`` checked: known variants, known train keys, ranges that are not empty, choices of the setting's type."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"tune: expected a mapping of study name to its settings, got {raw!r}")
    studies, keys = {}, _train_keys(train)
    for name, spec in raw.items():
        path = f"tune.{name}"
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", str(name)):
            raise ConfigError(f"{path}: invalid study name; expected letters, digits, '-' and '_' only")
        if not isinstance(spec, dict) or not isinstance(spec.get("space"), dict) or not spec["space"]:
            raise ConfigError(f"{path}.space: expected a non-empty mapping of train keys to ranges")
        if spec.get("variant") not in variants:
            raise ConfigError(f"{path}.variant: expected one of the variants: {', '.join(variants)}, got {spec.get('variant')!r}")
        space = {}
        for key, dim in spec["space"].items():
            if key not in keys:
                raise ConfigError(f"{path}.space.{key}: unknown key; expected a train setting: {', '.join(keys)}")
            space[str(key)] = _build_dimension(dim, *keys[key], f"{path}.space.{key}")
        reference = _build_reference(spec.get("reference", {}), keys, f"{path}.reference")
        own = {k: v for k, v in spec.items() if k not in ("space", "reference")}
        studies[str(name)] = _build(Study, own, path, base={"space": space, "reference": reference})
    return studies


def _build_reference(raw: Any, keys: dict[str, tuple[Any, Any]], path: str) -> dict[str, Any]:
    """``tune.<study>.reference``: dotted train keys and their values, checked as the variant's own would be."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of train keys to values, got {raw!r}")
    reference = {}
    for key, value in raw.items():
        if key not in keys:
            raise ConfigError(f"{path}.{key}: unknown key; expected a train setting: {', '.join(keys)}")
        if key == "architecture" and value not in ARCHITECTURES:
            raise ConfigError(f"{path}.{key}: unknown architecture {value!r}; expected one of {', '.join(ARCHITECTURES)}")
        reference[str(key)] = _checked_value(value, *keys[key], f"{path}.{key}")
    return reference


def with_settings(cfg: Train, settings: dict[str, Any], path: str = "trial") -> Train:
    """``cfg`` with dotted ``settings`` (``{"augment.erase": 0.2, "dropout": 0.1}``) applied and checked across keys."""
    top = {k: v for k, v in settings.items() if not k.startswith("augment.")}
    augment = {k.removeprefix("augment."): v for k, v in settings.items() if k.startswith("augment.")}
    cfg = dataclasses.replace(cfg, **top, augment=dataclasses.replace(cfg.augment, **augment))
    return _checked_train(cfg, path)


@dataclass(frozen=True)
class Params:
    base: Base
    data: Data
    prepare: Prepare
    train: Train
    variants: dict[str, Train]
    evaluate: Evaluate = field(default_factory=Evaluate)
    tracking: Tracking = field(default_factory=Tracking)
    registry: Registry = field(default_factory=Registry)
    retrain: Retrain = field(default_factory=Retrain)
    serve: Serve = field(default_factory=Serve)
    monitor: Monitor = field(default_factory=Monitor)
    tune: dict[str, Study] = field(default_factory=dict)

    def variant(self, name: str) -> Train:
        """The resolved settings of one variant, or a ConfigError listing the valid names."""
        if name not in self.variants:
            raise ConfigError(f"unknown variant {name!r}; params.yaml defines: {', '.join(self.variants)}")
        return self.variants[name]


def _kind(tp: Any) -> str:
    names = {int: "integer", float: "number", str: "string", bool: "boolean"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _convert(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert it; raise ConfigError otherwise."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{path}: expected one of {', '.join(map(str, typing.get_args(tp)))}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{path}: expected a list of non-empty strings, got {value!r}")
        return tuple(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{path}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{path}: expected a non-empty string, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {tp!r} at {path}")  # a bug in this module, not in params


def _build(cls: type, raw: Any, path: str, base: dict[str, Any] | None = None) -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and missing required ones."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(map(str, raw)) - set(fields))
    if unknown:
        raise ConfigError(f"{path}.{unknown[0]}: unknown key; expected one of {', '.join(fields)}")
    values = dict(base or {})
    for name, f in fields.items():
        key = f"{path}.{name}"
        if name not in raw:
            no_default = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if no_default and name not in values:
                raise ConfigError(f"{key}: missing; expected {_kind(hints[name])}")
            continue
        value = _convert(raw[name], hints[name], key)
        check = f.metadata.get("check")
        problem = check(value) if check else None
        if problem:
            raise ConfigError(f"{key}: expected {problem.format(kind=_kind(hints[name]))}, got {raw[name]!r}")
        values[name] = value
    return cls(**values)


def _build_variant(name: str, raw: Any, defaults: Train) -> Train:
    path = f"variants.{name}"
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with at least 'architecture', got {raw!r}")
    if "architecture" not in raw:
        raise ConfigError(f"{path}.architecture: missing; expected one of {', '.join(ARCHITECTURES)}")
    if raw["architecture"] not in ARCHITECTURES:
        raise ConfigError(
            f"{path}.architecture: unknown architecture {raw['architecture']!r}; expected one of {', '.join(ARCHITECTURES)}"
        )
    merged = dict(raw)
    if isinstance(raw.get("augment"), dict):  # a partial augment block overrides key by key
        merged["augment"] = {**dataclasses.asdict(defaults.augment), **raw["augment"]}
    return _checked_train(_build(Train, merged, path, base=dataclasses.asdict(defaults) | {"augment": defaults.augment}), path)


def _checked_train(cfg: Train, path: str) -> Train:
    """Checks across keys of one ``Train``."""
    if cfg.augment.alternate_flips and not cfg.augment.flip:
        raise ConfigError(f"{path}.augment.alternate_flips: expected false, since {path}.augment.flip is false; set both")
    return cfg


def parse_params(raw: Any) -> Params:
    """Validate a parsed params mapping and return frozen, typed objects."""
    if not isinstance(raw, dict):
        raise ConfigError(f"params: expected a mapping at the top level, got {type(raw).__name__}")
    sections = {f.name for f in dataclasses.fields(Params)}
    unknown = sorted(set(map(str, raw)) - sections)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown section; expected one of {', '.join(sorted(sections))}")
    for required in ("base", "data", "prepare", "train", "variants"):
        if required not in raw:
            raise ConfigError(f"{required}: missing section")
    base = _build(Base, raw["base"], "base")
    if len(set(base.class_names)) != 10:
        raise ConfigError(f"base.class_names: expected 10 distinct names, got {list(base.class_names)}")
    data = _build(Data, raw["data"], "data")
    if not data.mirrors:
        raise ConfigError("data.mirrors: expected at least one mirror")
    train = _checked_train(_build(Train, raw["train"], "train"), "train")
    if not isinstance(raw["variants"], dict) or not raw["variants"]:
        raise ConfigError(f"variants: expected a non-empty mapping of variant name to settings, got {raw['variants']!r}")
    for name in map(str, raw["variants"]):  # it names a DVC stage, a folder and an MLflow run
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name):
            raise ConfigError(f"variants.{name}: invalid variant name; expected letters, digits, '-' and '_' only")
    variants = {str(k): _build_variant(str(k), v, train) for k, v in raw["variants"].items()}
    return Params(
        base=base,
        data=data,
        prepare=_build(Prepare, raw["prepare"], "prepare"),
        train=train,
        variants=variants,
        evaluate=_build_evaluate(raw.get("evaluate"), variants),
        tracking=_build(Tracking, raw.get("tracking", {}), "tracking"),
        registry=_build(Registry, raw.get("registry", {}), "registry"),
        retrain=_build(Retrain, raw.get("retrain", {}), "retrain"),
        serve=_build(Serve, raw.get("serve", {}), "serve"),
        monitor=_build(Monitor, raw.get("monitor", {}), "monitor"),
        tune=_build_tune(raw.get("tune"), variants, train),
    )


def resolve_variant(params: Params, variant: str, epochs: int | None = None, limit: int | None = None) -> Train:
    """One variant's settings with command-line overrides (``--epochs``, ``--limit``) applied and checked."""
    cfg = params.variant(variant)
    for key, value in (("epochs", epochs), ("limit", limit)):
        if value is not None and (value < 0 or (key == "epochs" and value == 0)):
            raise ConfigError(f"--{key}: expected a positive integer, got {value}")
    return dataclasses.replace(cfg, epochs=epochs or cfg.epochs, limit=cfg.limit if limit is None else limit)


def flatten(obj: dict, prefix: str = "") -> dict[str, Any]:
    """``{"augment": {"shift": 2}}`` -> ``{"augment.shift": 2}``."""
    out: dict[str, Any] = {}
    for key, value in obj.items():
        out |= flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value}
    return out


def overrides(cfg: Train, defaults: Train) -> dict[str, Any]:
    """The settings of ``cfg`` that differ from ``defaults`` (the ``train:`` section), as dotted keys: ``{"augment.shift": 1}``."""
    mine, base = flatten(dataclasses.asdict(cfg)), flatten(dataclasses.asdict(defaults))
    return {k: v for k, v in mine.items() if v != base.get(k) and k != "architecture"}


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, plus YAML 1.2 floats without a dot (``1e-3``, as DVC reads them) and no duplicate keys."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                if key.value in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key.value!r}", key.start_mark)
                seen.add(key.value)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def load_params(path: Path | str = "params.yaml") -> Params:
    """Read and validate ``params.yaml``; raise ConfigError naming the key on any problem."""
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(), Loader=_Loader)
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found; run the command from the repository root, where params.yaml is") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    return parse_params(raw)
