"""``fmnist promote [--version N] [--json]`` and ``fmnist rollback [--to N]``: the gate and rollback from the command line.

The decision goes to the version's tags (``gate.decision``, ``gate.reason``) and the terminal;
``reports/promotion.json`` stays the ``register`` stage's output, written only through DVC.
"""

from __future__ import annotations

import json

from pipeline.adapters.mlflow import registry
from pipeline.adapters.paths import Paths
from pipeline.adapters.process import load_tensorflow
from pipeline.core.config import load_params
from pipeline.core.errors import RegistryError
from pipeline.services import promotion


def cli(args) -> None:
    """Run the gate for ``--version`` (default: the ``challenger`` alias) and print the decision (``--json``: the record)."""
    params, paths = load_params(), Paths()
    name = params.registry.model_name
    version = args.version or registry.alias_version(name, "challenger")
    if version is None:
        raise RegistryError(f"{name} has no 'challenger'; run `dvc repro` or pass --version")
    load_tensorflow()  # quietly, before the gate loads the models
    record = promotion.gate(params, paths, str(version))
    if args.json:
        print(json.dumps(record, indent=2))
        return
    print(f"version {version}: {record['decision']}: {record['reason']}")


def rollback_cli(args) -> None:
    """Make ``--to`` (default: ``previous``) the champion again; the replaced champion becomes ``previous``."""
    champion, previous = promotion.rollback(load_params(), Paths(), args.to)
    print(f"champion is now version {champion} (previous: {previous})")
