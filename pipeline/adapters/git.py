"""git: the one place that runs it, and the one pathspec of what the pipeline itself rewrites.

A failed command raises :class:`ToolFailed` naming the command, the folder and git's own
``fatal:``/``error:`` lines, so the cause reaches the user.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from pipeline.core.errors import PipelineError

# Tracked files the pipeline rewrites as it runs: a change there is a result, not a change to what is trained.
RESULTS = ("--", ".", ":(exclude)dvc.lock", ":(exclude)reports", ":(exclude)data/accepted")


class ToolFailed(PipelineError):
    """An outside command (git, DVC) exited non-zero; the message keeps its own error lines."""


def cause(output: str, markers: tuple[str, ...], keep: int = 1500) -> str:
    """The lines of ``output`` that start with one of ``markers`` (a tool's own error lines), else its last ``keep`` characters."""
    lines = [line.strip() for line in output.splitlines() if line.strip().startswith(markers)]
    return "\n".join(dict.fromkeys(lines)) if lines else output.strip()[-keep:]


def run(root: Path, *args: str) -> subprocess.CompletedProcess:
    """``git <args>`` in ``root``, output captured; the caller reads the exit code."""
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)


def git(root: Path, *args: str) -> str:
    """``git <args>`` in ``root``; returns stdout, stripped.

    Raises:
        ToolFailed: git exited non-zero (or is not installed): the message names the command and keeps git's
            ``fatal:`` and ``error:`` lines.
    """
    try:
        proc = run(root, *args)
    except OSError as exc:
        raise ToolFailed(f"git {' '.join(args)} could not run in {root}: {exc}. Install git") from exc
    if proc.returncode != 0:
        why = cause(proc.stderr + proc.stdout, ("fatal:", "error:"))
        raise ToolFailed(f"git {' '.join(args)} failed in {root} (exit {proc.returncode}): {why}")
    return proc.stdout.strip()


def changes(root: Path, untracked: bool = True) -> list[str]:
    """Tracked (and with ``untracked``, new and not ignored) files that differ from HEAD, less the pipeline's results."""
    out = run(root, "status", "--porcelain", f"--untracked-files={'all' if untracked else 'no'}", *RESULTS).stdout
    return [line[3:] for line in out.splitlines()]
