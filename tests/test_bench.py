"""``fmnist bench --quick``: the benchmark suite runs end to end and writes both reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import BIN, ROOT, run

MEASURES = [
    "best_over_seeds",
    "trick_screening",
    "time_to_92",
    "time_to_93",
    "time_to_94",
    "pipeline_vs_plain",
    "tuned_vs_plain",
    "dvc_noop",
    "orchestration",
    "tracking_overhead",
    "peak_memory",
    "pipeline_wall_time",
]


@pytest.mark.slow
def test_quick_bench_writes_every_measure(prepared_project: Path, tmp_path: Path):
    out = tmp_path / "out"
    proc = run([str(BIN / "fmnist"), "bench", "--quick", "--out", str(out)], cwd=prepared_project, timeout=900)
    assert "pipeline_vs_plain" in proc.stdout  # the table for people

    doc = json.loads((out / "benchmarks.json").read_text())
    assert doc["mode"] == "quick"
    assert doc["machine"]["cores"] >= 1 and doc["machine"]["versions"]["tensorflow"]
    assert [m["key"] for m in doc["measures"]] == MEASURES
    for m in doc["measures"]:
        assert not str(m.get("status", "")).startswith("failed"), m
        assert m["goal"] and ("status" in m or (m["figure"] is not None and m["met"] in (True, False) and m["rows"]))
    measured = {m["key"] for m in doc["measures"] if "status" not in m}
    assert measured >= set(MEASURES) - {"pipeline_wall_time"}  # that one needs a full `fmnist run`
    orchestration = next(m for m in doc["measures"] if m["key"] == "orchestration")
    assert {"fmnist flow, nothing to do, whole process", "training_flow() call alone, nothing to do"} <= {
        r["name"] for r in orchestration["rows"]
    }
    assert doc["profile"]

    screening = next(m for m in doc["measures"] if m["key"] == "trick_screening")
    assert screening["table"]["rows"][0][1] == "(none)" and len(screening["table"]["rows"]) >= 2
    best = next(m for m in doc["measures"] if m["key"] == "best_over_seeds")
    assert 0 < best["figure"] <= 1 and set(best["recall"]) >= {"Shirt", "T-shirt/top"}

    md = (out / "benchmarks.md").read_text()
    assert "QUICK MODE" in md and "## What we measured" in md
    for m in doc["measures"]:
        assert m["title"] in md
    assert "| settings | trick added | val accuracy | gain (points) |" in md and "Recall per class" in md
    assert not (prepared_project / "reports" / "benchmarks.json").exists()  # --out, not reports/

    # --only takes one measure again into the same report and keeps the others as they were
    run([str(BIN / "fmnist"), "bench", "--quick", "--only", "tracking_overhead", "--out", str(out)], cwd=prepared_project)
    again = json.loads((out / "benchmarks.json").read_text())
    assert [m["key"] for m in again["measures"]] == MEASURES
    for old, new in zip(doc["measures"], again["measures"]):
        if new["key"] == "tracking_overhead":
            assert "--only tracking_overhead" in new["measured"] and new["rows"]
        else:
            assert new == old
    assert "Measured on its own:" in (out / "benchmarks.md").read_text()


def test_bench_only_refuses_unknown_measures_and_a_missing_report(prepared_project: Path, tmp_path: Path):
    proc = run([str(BIN / "fmnist"), "bench", "--quick", "--only", "time_to_99", "--out", str(tmp_path)],
               cwd=prepared_project, check=False)  # fmt: skip
    assert proc.returncode == 2 and "--only: unknown measure 'time_to_99'" in proc.stderr
    proc = run([str(BIN / "fmnist"), "bench", "--quick", "--only", "time_to_92", "--out", str(tmp_path)],
               cwd=prepared_project, check=False)  # fmt: skip
    assert proc.returncode == 2 and "does not exist: run the full `fmnist bench` first" in proc.stderr


def test_the_bench_projects_params_hold_only_settings_of_the_variants_they_keep(tmp_path: Path):
    """The temporary project of ``fmnist bench`` copies params.yaml with the tutorial's variants only; a setting that
    names a dropped one (``evaluate.tta.wide_aug``) made every ``dvc repro`` in the copy fail."""
    from benchmarks.project import TempProject
    from pipeline.core.config import parse_params

    assert parse_params(yaml.safe_load((ROOT / "params.yaml").read_text())).evaluate.tta  # the case that failed
    for kept in (("baseline",), ("baseline", "dropout")):
        params = parse_params(TempProject(tmp_path, ROOT, kept, limit=500).params())
        assert set(params.variants) == set(kept) and set(params.evaluate.tta) <= set(kept)
        assert params.train.limit == 500 and all(v.epochs == 1 for v in params.variants.values())
