"""``fmnist lineage REF [--json]``: a version or alias back to its commit, experiment, DVC hashes and runs; a run or experiment forward to its versions."""

from __future__ import annotations

import json

from pipeline.adapters.paths import Paths
from pipeline.core.config import load_params
from pipeline.services.lineage import lineage


def _back(r: dict) -> list[str]:
    aliases = f" ({', '.join(r['aliases'])})" if r["aliases"] else ""
    exp = "none"
    if r["exp_name"]:
        exp = (
            f"{r['exp_name']} (baseline {r['exp_baseline_rev'][:12]}, commit {r['exp_commit'][:12] or 'not found in refs/exps'})"
        )
    parent = f"{r['parent_run_id']} ({r['parent_run_name']})" if r["parent_run_id"] else "none"
    lines = [
        f"{r['model']} version {r['version']}{aliases}",
        f"  git commit        {r['git_commit']}{' + uncommitted changes' if r['git_dirty'] else ''}",
        f"  DVC experiment    {exp}",
        f"  MLflow run        {r['run_id']}",
        f"  MLflow parent     {parent}",
        f"  Prefect flow run  {r['prefect_flow_run_id'] or 'none'}",
        f"  data/prepared     {r['prepared_md5'] or 'unversioned'}",
        f"  accepted batches  {', '.join(f'{b} ({n})' for b, n in r['accepted_batches'].items()) or 'none'}",
        "  dvc.lock",
    ]
    for stage, outs in r["stage_hashes"].items():
        lines += [f"    {stage}: {path} {md5}" for path, md5 in outs.items()]
    return lines


def _forward(r: dict) -> list[str]:
    lines = [f"{r['kind']} {r['ref']}: versions {', '.join(r['versions']) or 'none'} of {r['model']}"]
    lines += [f"  run {run['run_id']} {run['name']} ({run['role'] or 'run'})" for run in r["runs"]]
    return lines


def cli(args) -> None:
    record = lineage(load_params(), Paths(), args.ref)
    if args.json:
        print(json.dumps(record, indent=2))
        return
    print("\n".join(_back(record) if "version" in record else _forward(record)))
