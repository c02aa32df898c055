"""The checkouts of a distributed training (pipeline/adapters/workspace.py): which commit the workers train, and what is refused.

Real git repositories (project copies and their clones); the training itself on workers is in tests/test_stack.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import BIN, make_project, run

from benchmarks.sandbox import commit
from pipeline.adapters import workspace


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_project(tmp_path / "repo")


def test_the_workers_train_head_and_results_do_not_count_as_changes(repo):
    head = run(["git", "rev-parse", "HEAD"], repo).stdout.strip()
    (repo / "dvc.lock").write_text("schema: '2.0'\n")  # what the pipeline itself rewrites as it runs
    (repo / "reports").mkdir(exist_ok=True)
    (repo / "reports" / "summary.md").write_text("x\n")
    (repo / "data" / "accepted" / "batch.npz").write_bytes(b"")
    assert workspace.commit_for_workers(repo) == head


def test_uncommitted_code_or_params_are_refused_by_name(repo):
    with (repo / "params.yaml").open("a") as f:
        f.write("# an edit\n")
    (repo / "pipeline" / "core" / "new_module.py").write_text("")
    with pytest.raises(workspace.WrongCommit, match=r"cannot see: .*params\.yaml") as exc:
        workspace.commit_for_workers(repo)
    assert "pipeline/core/new_module.py" in str(exc.value) and "Commit them" in str(exc.value)


def test_a_clone_is_moved_to_the_commit_it_is_given(repo, tmp_path):
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    (repo / "NOTE").write_text("new\n")
    new = commit(repo, "new")
    (clone / "dvc.lock").write_text("schema: '2.0'\n")  # left by an earlier variant: the checkout replaces it
    workspace.enter_commit(clone, new, "worker-1")
    assert run(["git", "rev-parse", "HEAD"], clone).stdout.strip() == new and (clone / "NOTE").exists()


def test_a_clone_refuses_a_commit_its_remote_lacks_and_its_own_edits(repo, tmp_path):
    clone, other = tmp_path / "clone", tmp_path / "other"
    for path in (clone, other):
        run(["git", "clone", "-q", str(repo), str(path)], tmp_path)
    (other / "NOTE").write_text("never pushed\n")
    unpushed = commit(other, "local only")
    with pytest.raises(workspace.WrongCommit, match=rf"worker-1: commit {unpushed[:12]} is not in its git remote {repo}"):
        workspace.enter_commit(clone, unpushed, "worker-1")
    head = run(["git", "rev-parse", "HEAD"], clone).stdout.strip()
    with (clone / "params.yaml").open("a") as f:
        f.write("# edited on the worker\n")
    with pytest.raises(workspace.WrongCommit, match=r"worker-1: its clone .* has local edits \(params\.yaml\)"):
        workspace.enter_commit(clone, head, "worker-1")
    with pytest.raises(workspace.WrongCommit, match="not a clone of the project"):
        workspace.enter_commit(tmp_path, head, "worker-1")


def test_no_default_dvc_remote_is_refused_with_the_fix(repo):
    with pytest.raises(workspace.NoRemote, match=r"dvc remote add -d"):
        workspace.default_remote(repo)
    run([str(BIN / "dvc"), "remote", "add", "-d", "--local", "team", str(repo.parent / "remote")], repo)
    assert workspace.default_remote(repo) == "team"


@pytest.mark.parametrize("command", ["flow", "retrain"])
def test_force_with_workers_is_refused_before_anything_runs(repo, command):
    proc = run([str(BIN / "fmnist"), command, "--force", "--workers", "fmnist-process"], repo, check=False)
    assert proc.returncode == 2
    assert "--force with --workers" in proc.stderr and "Change a param, or retrain here" in proc.stderr
    assert not (repo / "data" / "raw").exists()  # refused before the first stage
    assert "Prefect" not in proc.stdout + proc.stderr  # and before a Prefect server started, or the retraining's intake


def test_a_failed_git_or_dvc_command_keeps_the_tools_own_error_and_names_the_command(tmp_path, repo):
    from pipeline.adapters import dvc, git

    with pytest.raises(git.ToolFailed) as failed:
        git.git(tmp_path, "rev-parse", "HEAD")  # not a repository
    assert str(failed.value).startswith(f"git rev-parse HEAD failed in {tmp_path} (exit 128): fatal: not a git repository")
    run([str(BIN / "dvc"), "remote", "add", "-d", "gone", "s3://bucket/cache"], repo)
    run([str(BIN / "dvc"), "remote", "modify", "gone", "endpointurl", "http://127.0.0.1:9"], repo)  # nothing listens there
    (repo / "data" / "extra.txt").write_text("something to push\n")
    run([str(BIN / "dvc"), "add", "-q", "data/extra.txt"], repo)
    with pytest.raises(git.ToolFailed) as failed:
        dvc.run(repo, "push", env={"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"})
    message = str(failed.value)
    assert message.startswith(f"dvc push failed in {repo} (exit ")
    assert "ERROR:" in message and "Could not connect to the endpoint URL" in message
    assert "fix: the S3 remote does not answer: is the stack up? See `fmnist stack status`" in message
    assert "Having any troubles" not in message
