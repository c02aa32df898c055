"""Stage deps derived from the code: ``dvc.yaml`` lists exactly the ``pipeline/`` files each stage command imports.

Then DVC reruns what a code change affects, and nothing else: a change to the served model
reruns ``evaluate`` and ``register``; a training default reruns ``train``; the README, the CLI
and the flows rerun nothing.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import stage_deps
import tiny_repro
from conftest import ROOT, dvc


def test_dvc_yaml_lists_every_module_each_stage_imports_and_no_other():
    assert stage_deps.problems(ROOT / "dvc.yaml") == []


def test_a_missing_or_stale_dep_is_named_with_its_stage(tmp_path):
    text = (ROOT / "dvc.yaml").read_text()
    evaluate_serving = "\n        - pipeline/adapters/mlflow/serving.py\n"  # in evaluate's foreach block
    assert evaluate_serving in text
    (tmp_path / "pipeline").symlink_to(ROOT / "pipeline")
    broken = text.replace(evaluate_serving, "\n", 1)
    broken = broken.replace(
        "\n      - pipeline/stages/summarize.py\n", "\n      - pipeline/stages/summarize.py\n      - pipeline/cli.py\n"
    )
    (tmp_path / "dvc.yaml").write_text(broken)
    found = stage_deps.problems(tmp_path / "dvc.yaml")
    assert "stage evaluate@*: missing dep pipeline/adapters/mlflow/serving.py (its command imports it)" in found
    assert "stage summarize: dep pipeline/cli.py is never imported by its command" in found
    assert len(found) == 2, found


def test_function_level_imports_count():
    """``train`` imports the training loop and the epoch logger inside functions; they are its deps all the same."""
    deps = stage_deps.derived_deps("python -m pipeline.stages.train ${key}")
    assert {"pipeline/core/training.py", "pipeline/adapters/mlflow/epochs.py", "pipeline/core/config.py"} <= set(deps)
    assert "pipeline/adapters/mlflow/serving.py" not in deps  # the served model is evaluate's business
    assert not any(d.startswith(("pipeline/cli", "pipeline/orchestration", "pipeline/commands")) for d in deps)


def test_the_code_mlflow_runs_to_load_the_served_model_is_a_dep_of_the_stages_that_log_and_load_it():
    """``serving.py`` names ``model_code.py`` in ``MODEL_CODE``, never imports it (importing it would set the model)."""
    for cmd in ("python -m pipeline.stages.evaluate ${key}", "python -m pipeline.stages.register"):
        assert "pipeline/adapters/mlflow/model_code.py" in stage_deps.derived_deps(cmd)


@pytest.fixture(scope="module")
def reproduced_copy(prepared_cache, tmp_path_factory) -> Path:
    """A private copy of the session's reproduced project (code, outputs, DVC cache and dvc.lock)."""
    source = tiny_repro.reproduced(prepared_cache, tmp_path_factory)
    copy = tmp_path_factory.mktemp("deps") / "repo"
    shutil.copytree(source, copy, symlinks=True, ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts", "__pycache__"))
    (copy / "README.md").write_text("# a project\n")
    return copy


def _stale_after(repo: Path, path: str, change: str) -> set[str]:
    """The stages ``dvc status`` names after appending ``change`` to ``path`` (then restored)."""
    file = repo / path
    before = file.read_text()
    file.write_text(before + change)
    try:
        return set(json.loads(dvc(repo, "status", "--json").stdout or "{}"))
    finally:
        file.write_text(before)


@pytest.mark.slow
def test_dvc_status_reruns_what_a_code_change_affects_and_nothing_else(reproduced_copy):
    repo = reproduced_copy
    variants = ("baseline", "dropout")
    assert _stale_after(repo, "README.md", "") == set()  # the reproduced copy is up to date
    served = _stale_after(repo, "pipeline/adapters/mlflow/serving.py", "\n# the served model changed\n")
    assert served == {f"evaluate@{v}" for v in variants} | {"register"}
    default = _stale_after(repo, "pipeline/core/training.py", "\nDEFAULT_CHANGED = True\n")
    assert default == {f"train@{v}" for v in variants}
    for untracked in ("README.md", "pipeline/cli.py", "pipeline/orchestration/flows.py", "pipeline/commands/run.py"):
        assert _stale_after(repo, untracked, "\n# edited\n") == set(), untracked
