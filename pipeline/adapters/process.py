"""The process an entry point runs in: quiet libraries, logging, user errors as exit 2, a fast exit.

Every stage (``python -m pipeline.stages.<stage>``) and every ``fmnist`` command runs through
:func:`run_entry`. Those that use TensorFlow have it loaded first by :func:`load_tensorflow`, which
hides its start-up notes, so the stages import TensorFlow inside ``main()``, not at module level.
"""

from __future__ import annotations

import atexit
import gc
import logging
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from pipeline.core.errors import PipelineError

# TensorFlow's C++ log level (its own INFO and WARNING lines): errors only; no MLflow download progress bars
# (one per artifact fetched when a model loads). An explicit setting in the environment wins.
QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}

# What TensorFlow 2.21 prints on a CPU machine while it loads, before its log level applies (it logs
# them before absl::InitializeLog): oneDNN notes, CPU features, CUDA probes. Nothing else is hidden.
_STARTUP_NOTES = re.compile(
    r"All log messages before absl::InitializeLog|\] oneDNN custom operations are on|cudart_stub\.cc:\d+\] Could not find cuda"
    r"|cpu_feature_guard\.cc|^To enable the following instructions:|cuda_platform\.cc:\d+\] failed call to cuInit"
)


def quiet_libraries() -> None:
    """Set the libraries' log levels (before they are imported); an explicit setting in the environment wins."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


@contextmanager
def _stderr_without_startup_notes() -> Iterator[None]:
    """Capture file descriptor 2 for the block, then pass on every line but TensorFlow's start-up notes."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode(errors="replace").splitlines(keepends=True)
            sys.stderr.write("".join(line for line in lines if not _STARTUP_NOTES.search(line)))
            sys.stderr.flush()


def load_tensorflow() -> None:
    """Import TensorFlow and set up its devices, so that its start-up notes are not printed (errors still are)."""
    quiet_libraries()
    if "tensorflow" in sys.modules:
        return
    with _stderr_without_startup_notes():
        import tensorflow as tf

        tf.config.list_physical_devices()  # the CUDA probe, done here rather than at the first operation


def run_entry(main: Callable[[], object], *, tensorflow: bool = False) -> None:
    """Run an entry point's ``main`` with logging; user errors exit 2 with their message only.

    At exit, ``gc.freeze()`` spares the process the full garbage collections that interpreter
    shutdown runs over TensorFlow's and MLflow's objects: 1.3-1.7 s of each train and evaluate
    stage here (medians of 3, alternating). Exit handlers still run and the OS frees the memory;
    only the finalizers of objects left in reference cycles are skipped (the stages close their
    files and runs themselves).

    Args:
        main: the entry point.
        tensorflow: load TensorFlow first, quietly (:func:`load_tensorflow`): for entry points that use it.
    """
    quiet_libraries()
    if tensorflow:
        load_tensorflow()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    atexit.register(gc.freeze)
    try:
        main()
    except PipelineError as exc:  # the user's input, not a bug: the message names the fix
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
