"""Every path the pipeline reads or writes, named once, relative to one root."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


def repo_root(start: Path | None = None) -> Path:
    """The main repository root, also from inside a ``dvc exp run --temp``/``--queue`` copy.

    DVC runs temporary experiments in ``<repo>/.dvc/tmp/exps/<name>``; stores that must be
    shared (the MLflow database, the registry lock) live at the root of the repository that holds
    that folder.
    """
    start = (start or Path.cwd()).resolve()
    parts = start.parts
    for i in range(len(parts) - 2):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return start


@dataclass(frozen=True)
class Paths:
    """The project's files under ``root`` (the working directory by default)."""

    root: Path = field(default_factory=Path.cwd)

    # data: raw (immutable, checksummed) -> prepared arrays; new data comes in beside them
    raw = property(lambda self: self.root / "data" / "raw")
    prepared = property(lambda self: self.root / "data" / "prepared")
    incoming = property(lambda self: self.root / "data" / "incoming")
    accepted = property(lambda self: self.root / "data" / "accepted")
    quarantine = property(lambda self: self.root / "data" / "quarantine")
    simulated = property(lambda self: self.root / "data" / "simulated.json")  # reserve images handed out
    predictions = property(lambda self: self.root / "data" / "predictions")  # what fmnist serve answered (git-ignored)
    to_label = property(lambda self: self.root / "data" / "to-label")  # served images fmnist monitor picked for a person

    def split(self, name: str) -> Path:
        """``data/prepared/<name>.npz``: ``train``, ``val``, ``test`` or ``reserve``."""
        return self.prepared / f"{name}.npz"

    # models: one folder per variant, and resumable checkpoints outside it
    models = property(lambda self: self.root / "models")

    def model_dir(self, variant: str) -> Path:
        return self.models / variant

    def model_file(self, variant: str) -> Path:
        return self.model_dir(variant) / "model.keras"

    def history(self, variant: str) -> Path:
        return self.model_dir(variant) / "history.csv"

    def train_info(self, variant: str) -> Path:
        return self.model_dir(variant) / "train.json"

    def checkpoint(self, variant: str, job: str) -> Path:
        """Where a killed training of ``variant`` resumes from; ``job`` identifies its settings and data."""
        return self.root / "checkpoints" / f"{variant}-{job}"

    # reports
    reports = property(lambda self: self.root / "reports")
    data_report = property(lambda self: self.reports / "data.json")
    samples_figure = property(lambda self: self.reports / "figures" / "samples.png")
    summary = property(lambda self: self.reports / "summary.md")
    promotion = property(lambda self: self.reports / "promotion.json")
    run_record = property(lambda self: self.reports / "run.json")  # `fmnist run`'s own record; no stage writes it
    tune_reports = property(lambda self: self.reports / "tune")  # `fmnist tune`: <study>.md, .json and figures

    def tune_confirmation(self, study: str) -> Path:
        """`fmnist tune STUDY --confirm`: its best trial and the hand-tuned settings on seeds the search never used."""
        return self.tune_reports / f"{study}-confirm.json"

    optuna_db = property(lambda self: self.root / "optuna.db")  # the studies' embedded storage (git-ignored)

    def metrics(self, variant: str) -> Path:
        return self.reports / "metrics" / f"{variant}.json"

    def confusion(self, variant: str, suffix: str = ".csv") -> Path:
        """``reports/confusion/<variant><suffix>``: ``.csv``, ``-pairs.csv`` (for ``dvc plots``) or ``.png``."""
        return self.reports / "confusion" / f"{variant}{suffix}"

    def figure(self, variant: str, kind: str) -> Path:
        """``reports/figures/<variant>-<kind>.png``: ``curves`` or ``mistakes``."""
        return self.reports / "figures" / f"{variant}-{kind}.png"

    # stores and locks
    dvc_lock = property(lambda self: self.root / "dvc.lock")
    params = property(lambda self: self.root / "params.yaml")
    retrain_lock = property(lambda self: self.root / ".dvc" / "tmp" / "retrain.lock")

    @property
    def store_root(self) -> Path:
        """Where the shared stores live: the main repository root, also from an experiment's copy."""
        return repo_root(self.root)

    mlflow_db = property(lambda self: self.store_root / "mlflow.db")
    mlartifacts = property(lambda self: self.store_root / "mlartifacts")
    registry_lock = property(lambda self: self.store_root / ".registry.lock")
    experiment_lock = property(lambda self: self.store_root / ".experiment-runs.lock")  # opening a DVC experiment's parent run
