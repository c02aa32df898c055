"""Alerts that reach a person: one destination, an apprise URL in ``FMNIST_ALERTS_URL``, for every process that alerts.

apprise (https://github.com/caronc/apprise) takes one URL per service: ``slack://...``, ``mailto://...``,
``msteams://...``, ``ntfy://...`` and about a hundred more; ``json://127.0.0.1:PORT/path`` posts a
JSON body (``title``, ``message``, ``type``) to a local receiver, which is what the tests use. It is an
environment variable, not a setting of ``params.yaml``: it usually holds a token, which does not belong
in git.

Who alerts: the gate (promoted or refused, with its reason), the monitoring flow (drift found) and
``fmnist serve`` (a version that failed to load or its check). With no destination set nothing
tries to send, and the log says so once per process. A URL apprise cannot parse is refused when
the process starts (:func:`destination`), naming the variable. A destination that fails to answer
is logged; it never fails the work that alerted.
"""

from __future__ import annotations

import logging
import os
import threading

from pipeline.core.environment import ALERTS_URL
from pipeline.core.errors import ConfigError

log = logging.getLogger(__name__)
_said = threading.Event()  # "no destination" is logged once per process


class Alerts:
    """The destination of one process's alerts (None: alerts are not sent)."""

    def __init__(self, url: str | None):
        self.url = url or None
        self._apprise = None
        if self.url:
            import apprise

            self._apprise = apprise.Apprise()
            if not self._apprise.add(self.url):
                raise ConfigError(
                    f"{ALERTS_URL}={_redacted(self.url)!r} is not an apprise URL; set it to one such as "
                    "slack://TokenA/TokenB/TokenC or json://127.0.0.1:PORT/path, or unset it to send no alerts"
                )

    def send(self, title: str, body: str, kind: str = "info") -> bool:
        """Send one alert (``kind``: info, success, warning or failure); True if the destination took it."""
        if self._apprise is None:
            if not _said.is_set():
                _said.set()
                log.info("no alert destination (%s is not set): %s: not sent", ALERTS_URL, title)
            return False
        try:
            ok = bool(self._apprise.notify(title=title, body=body, notify_type=kind))
        except Exception as exc:  # a destination that fails never fails the work
            ok, why = False, f"{type(exc).__name__}: {exc}"
        else:
            why = "it did not accept it"
        if not ok:
            log.warning("alert %r not delivered to %s (%s)", title, _redacted(self.url), why)
        return ok


def destination(env: dict[str, str] | None = None) -> Alerts:
    """The alerts of ``FMNIST_ALERTS_URL`` in ``env`` (default: this process's environment).

    Raises:
        ConfigError: the URL is set but not one apprise can send to.
    """
    return Alerts((os.environ if env is None else env).get(ALERTS_URL))


def _redacted(url: str) -> str:
    """The URL's scheme only: the rest often holds a token."""
    scheme, sep, _ = url.partition("://")
    return f"{scheme}://..." if sep else "<not a URL>"
