"""``fmnist bench --quick``: the benchmark suite runs end to end and writes both reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import BIN, run

MEASURES = [
    "pipeline_vs_plain",
    "tuned_vs_plain",
    "time_to_92",
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

    md = (out / "benchmarks.md").read_text()
    assert "QUICK MODE" in md and "## What we measured" in md
    for m in doc["measures"]:
        assert m["title"] in md
    assert not (prepared_project / "reports" / "benchmarks.json").exists()  # --out, not reports/
