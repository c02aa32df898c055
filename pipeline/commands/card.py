"""``fmnist card [--version N | --model]``: a version's model card (default: the champion's), or the model's, in the terminal."""

from __future__ import annotations

from pipeline.adapters.mlflow import registry
from pipeline.core.config import load_params
from pipeline.core.errors import RegistryError
from pipeline.services.lineage import resolve_version


def cli(args) -> None:
    name = load_params().registry.model_name
    if args.model:
        print(registry.model_description(name) or f"{name} has no description yet; `dvc repro` registers and describes it")
        return
    version = resolve_version(name, args.version or "champion")
    if version is None:
        raise RegistryError(f"{name} has no version or alias {args.version or 'champion'!r}; run `dvc repro` or pass --version N")
    text = registry.version_description(name, version)
    print(text or f"{name} version {version} has no card: it was registered before cards existed")
