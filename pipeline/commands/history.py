"""``fmnist history [--alias A] [--json]``: every move of the registered model's aliases, oldest first."""

from __future__ import annotations

import json

from pipeline.adapters.mlflow import registry
from pipeline.adapters.mlflow.store import tracking_uri
from pipeline.core.card import history_line
from pipeline.core.config import load_params


def cli(args) -> None:
    name = load_params().registry.model_name
    moves = [m for m in registry.alias_history(name) if args.alias in (None, m["alias"])]
    if args.json:
        print(json.dumps(moves, indent=2))
        return
    if not moves:
        print(f"{name}: no alias moves recorded in {tracking_uri()}")
        return
    print(f"{name}: {len(moves)} alias moves, oldest first ({tracking_uri()})")
    for move in moves:
        print(history_line(move))
