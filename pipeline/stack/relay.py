"""The stack's alert relay: what Alertmanager and Prefect's automations send, passed on to the one destination.

Alertmanager posts its webhook JSON (``POST /alertmanager``) and Prefect's automations a
``CustomWebhookNotificationBlock`` body ``{"title", "message", "type"}`` (``POST /prefect``). Neither
speaks apprise, whose one URL in ``FMNIST_ALERTS_URL`` is where every alert of this project goes
(:mod:`pipeline.adapters.alerts`): this process turns each post into one apprise notification.
An alert the destination did not take is answered 502, so Alertmanager sends it again; with no
destination set it is answered 200 and logged (nothing would take it later either).

Run by the stack: ``python -m pipeline.stack.relay --port PORT`` on 127.0.0.1; ``GET /health`` answers 200.
"""

from __future__ import annotations

import argparse
import http.server
import json
import logging

from pipeline.adapters.alerts import Alerts, destination
from pipeline.stack.monitoring import HEALTH as _HEALTH

log = logging.getLogger(__name__)
HEALTH = _HEALTH["relay"]


def from_alertmanager(body: dict) -> tuple[str, str, str]:
    """Title, text and apprise kind of one Alertmanager webhook (a group of alerts, firing or resolved)."""
    alerts = body.get("alerts") or []
    status = body.get("status", "firing")
    names = sorted({a.get("labels", {}).get("alertname", "?") for a in alerts})
    lines = []
    for a in alerts:
        labels, notes = a.get("labels", {}), a.get("annotations", {})
        severity = f" ({labels['severity']})" if "severity" in labels else ""
        summary = notes.get("summary") or notes.get("description") or ""
        lines.append(
            f"{a.get('status', status)}: {labels.get('alertname', '?')}{severity} since {a.get('startsAt', '?')}: {summary}"
        )
    if body.get("externalURL"):
        lines.append(f"Alertmanager: {body['externalURL']}")
    paging = any(a.get("labels", {}).get("severity") == "page" for a in alerts)
    kind = "success" if status == "resolved" else "failure" if paging else "warning"
    return f"[{status.upper()}] {', '.join(names) or 'alert'}", "\n".join(lines), kind


def from_prefect(body: dict) -> tuple[str, str, str]:
    """Title, text and apprise kind of one Prefect automation's notification."""
    kind = body.get("type") if body.get("type") in ("info", "success", "warning", "failure") else "failure"
    return str(body.get("title") or "Prefect automation"), str(body.get("message") or ""), kind


ROUTES = {"/alertmanager": from_alertmanager, "/prefect": from_prefect}


def handler(alerts: Alerts) -> type[http.server.BaseHTTPRequestHandler]:
    class Relay(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the handler's API)
            self._answer(200 if self.path == HEALTH else 404, "ok" if self.path == HEALTH else "not found")

        def do_POST(self) -> None:  # noqa: N802
            parse = ROUTES.get(self.path)
            if parse is None:
                return self._answer(404, f"POST {' or '.join(ROUTES)}")
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                title, text, kind = parse(body)
            except (ValueError, AttributeError, TypeError) as exc:
                return self._answer(400, f"not the JSON body of {self.path}: {exc}")
            log.info("%s: %s", self.path, title)
            delivered = alerts.send(title, text, kind)
            self._answer(200 if delivered or alerts.url is None else 502, "sent" if delivered else "not sent")

        def _answer(self, status: int, text: str) -> None:
            data = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args) -> None:  # requests are logged above, once each
            pass

    return Relay


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    alerts = destination()  # a malformed URL stops the relay at start, naming the variable
    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), handler(alerts))
    log.info("relaying alerts on http://127.0.0.1:%d to %s", args.port, "the destination" if alerts.url else "nobody")
    server.serve_forever()


if __name__ == "__main__":
    main()
