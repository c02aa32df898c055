"""``fmnist intake``: validate ``data/incoming/``, accept into ``data/accepted/``, quarantine the rest (:mod:`pipeline.services.intake`)."""

from __future__ import annotations

from pipeline.adapters.paths import Paths
from pipeline.core.config import load_params
from pipeline.services.intake import run


def cli(args) -> None:
    result = run(Paths(), load_params().base.class_names)
    if result.batch:
        print(f"accepted {result.accepted_images} images from {result.accepted_files} files into {result.batch}")
    for rel, reason in result.rejected.items():
        print(f"quarantined {rel}: {reason}")
    if not result.batch and not result.rejected:
        print("nothing in data/incoming/")
