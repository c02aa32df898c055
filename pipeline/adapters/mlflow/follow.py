"""The model a server holds, and a thread that follows a registry alias: load the new version beside the old, check it, swap.

A swap is one assignment (:meth:`Holder.swap`): a request takes :attr:`Holder.current` once when it
starts and finishes on that model, so none fails and none waits while another version loads. A
version that fails to load or to answer its check is not swapped in; the server keeps the old one
and counts the failure. When the registry does not answer, the server keeps serving what it has.

The versions are served by this process's code (the installed project): a swap changes the weights
and the settings logged with them (test-time augmentation, class names), not the code.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property

import numpy as np
from mlflow.exceptions import MlflowException

from pipeline.adapters.mlflow.registry import load_version
from pipeline.adapters.mlflow.store import client
from pipeline.core.errors import PipelineError, RegistryError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Served:
    """One loaded version: the pyfunc model and where it came from."""

    model: object
    name: str
    version: str
    alias: str | None
    run_id: str
    loaded_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @cached_property
    def classifier(self):
        """The :class:`~pipeline.adapters.mlflow.serving.FashionClassifier` inside the pyfunc model: the server calls its
        ``classify`` for the answer's columns, without MLflow's wrapper and a DataFrame per request."""
        return self.model.unwrap_python_model()

    def describe(self) -> dict[str, str | None]:
        return {
            "name": self.name,
            "version": self.version,
            "alias": self.alias,
            "run_id": self.run_id,
            "loaded_at": self.loaded_at,
        }


class Holder:
    """The version a server answers with now; :meth:`swap` replaces it in one step."""

    def __init__(self, served: Served):
        self.current = served

    def swap(self, served: Served) -> Served:
        old, self.current = self.current, served
        return old


def check(model, class_names: tuple[str, ...]) -> None:
    """A loaded version must answer an input example (one black image) with one row of ten probabilities and a class name.

    Raises:
        RegistryError: it did not, with what it answered.
    """
    try:
        out = model.predict(np.zeros((1, 28, 28), np.uint8))
        proba = out["probabilities"].iloc[0]
        ok = list(out.columns) == ["class_index", "class_name", "probabilities"] and len(out) == 1 and len(proba) == 10
    except Exception as exc:  # a model that cannot answer at all
        raise RegistryError(f"it does not answer its input example ({type(exc).__name__}: {exc})") from None
    if not ok or out["class_name"].iloc[0] not in class_names:
        raise RegistryError(f"its answer to its input example is not ten probabilities and a class name: {out.to_dict('list')}")


def load(name: str, version: str, alias: str | None, class_names: tuple[str, ...]) -> Served:
    """Load ``version`` (its model file checked against its hash tag) and :func:`check` it."""
    model = load_version(name, version)
    check(model, class_names)
    return Served(model, name, version, alias, client().get_model_version(name, version).run_id)


def resolve(name: str, alias: str) -> str:
    """The version ``alias`` points to.

    Raises:
        RegistryError: the alias is not set.
        PipelineError: the registry did not answer.
    """
    try:
        return str(client().get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            raise RegistryError(f"{name} has no alias {alias!r}") from None
        raise PipelineError(f"the registry did not answer: {exc.message}") from None
    except OSError as exc:  # the tracking server is down
        raise PipelineError(f"the registry did not answer: {exc}") from None


class Follower(threading.Thread):
    """Every ``poll_s`` seconds, the version ``alias`` points to; when it moved, load it, check it and swap it in.

    ``events`` receives ``("swap", old, new, seconds)``, ``("failed", version, reason)`` and
    ``("registry", reachable)`` (each change only), for the metrics and the log.
    """

    def __init__(self, holder: Holder, alias: str, poll_s: float, class_names: tuple[str, ...], events: Callable[..., None]):
        super().__init__(name=f"follow-{alias}", daemon=True)
        self.holder, self.alias, self.poll_s, self.class_names, self.events = holder, alias, poll_s, class_names, events
        self.stopped = threading.Event()
        self.refused: str | None = None  # the version last refused: not loaded again until the alias moves
        self.reachable = True

    def run(self) -> None:
        while not self.stopped.wait(self.poll_s):
            self.poll()

    def poll(self) -> None:
        name = self.holder.current.name
        try:
            wanted = resolve(name, self.alias)
        except RegistryError as exc:
            self._reach(True)
            log.warning("%s; keeping version %s", exc, self.holder.current.version)
            return
        except PipelineError as exc:
            self._reach(False, str(exc))
            return
        self._reach(True)
        if wanted in (self.holder.current.version, self.refused):
            return
        start = time.perf_counter()
        try:
            served = load(name, wanted, self.alias, self.class_names)
        except (PipelineError, RuntimeError, OSError, MlflowException) as exc:
            self.refused = wanted
            log.error("%s version %s (now @%s) refused, still serving version %s: %s", name, wanted, self.alias,
                      self.holder.current.version, exc)  # fmt: skip
            self.events("failed", wanted, str(exc))
            return
        old = self.holder.swap(served)
        self.refused = None
        seconds = time.perf_counter() - start
        log.info("@%s moved: now serving %s version %s (was %s; loaded and checked in %.1f s)", self.alias, name, wanted,
                 old.version, seconds)  # fmt: skip
        self.events("swap", old.version, wanted, seconds)

    def _reach(self, reachable: bool, why: str = "") -> None:
        if reachable != self.reachable:
            self.reachable = reachable
            if reachable:
                log.info("the registry answers again")
            else:
                log.error("%s; still serving version %s", why, self.holder.current.version)
            self.events("registry", reachable)
