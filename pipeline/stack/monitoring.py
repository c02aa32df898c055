"""The stack's watchers: a Prometheus that scrapes its servers, an Alertmanager, and the relay to the alert destination.

Prometheus (Debian's ``prometheus``) scrapes the MLflow and Prefect servers, itself, Alertmanager,
and every ``fmnist serve`` started with the stack's environment: such a server writes its address
into ``<root>/prometheus/targets/`` (file-based service discovery, :mod:`pipeline.adapters.prometheus`)
and removes it when it stops. It evaluates ``monitoring/alerts.yml`` of the repository and any rule
file put in ``<root>/prometheus/rules/`` (``POST /-/reload`` reads them again), and sends what fires
to Alertmanager (Debian's ``prometheus-alertmanager``), whose one receiver is the relay
(:mod:`pipeline.stack.relay`), which passes it on to ``FMNIST_ALERTS_URL``. The intervals are short,
for one machine: scrapes and rules every 5 s, firing alerts sent again every 10 s, a group's first
notification after 5 s.

All bind 127.0.0.1; Alertmanager's cluster port is off. Without the two Debian packages the stack
starts without them and says what to install.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import yaml

from pipeline.adapters.files import atomic_write_text
from pipeline.adapters.prometheus import TARGETS_ENV
from pipeline.stack.processes import free_port, spawn

HEALTH = {"relay": "/health", "alertmanager": "/-/ready", "prometheus": "/-/ready"}  # each answers 200 when up
INSTALL = "apt-get install -y prometheus prometheus-alertmanager"
INTERVAL = "5s"
RESEND = "10s"  # firing alerts sent again (1m by default): one lost while Alertmanager is discovered comes soon after


def missing() -> list[str]:
    """The Debian programs the stack's monitoring needs and this machine lacks."""
    return [p for p in ("prometheus", "prometheus-alertmanager") if not shutil.which(p)]


def targets(root: Path) -> Path:
    """The folder where ``fmnist serve`` processes announce themselves to Prometheus."""
    return root / "prometheus" / "targets"


def environment(root: Path) -> dict[str, str]:
    """What a shell exports so that the ``fmnist serve`` it starts is scraped."""
    return {TARGETS_ENV: str(targets(root))}


def start_relay(root: Path, env: dict) -> dict:
    """The relay to the alert destination (``FMNIST_ALERTS_URL`` in ``env``)."""
    port = free_port()
    cmd = [sys.executable, "-m", "pipeline.stack.relay", "--port", str(port)]
    return spawn("relay", cmd, root / "logs", env, root) | {"port": port}


def start_alertmanager(root: Path, env: dict, relay_port: int) -> dict:
    port, folder = free_port(), root / "alertmanager"
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "route": {
            "receiver": "relay",
            "group_by": ["alertname"],
            "group_wait": INTERVAL,
            "group_interval": "1m",
            "repeat_interval": "4h",
        },
        "receivers": [
            {
                "name": "relay",
                "webhook_configs": [{"url": f"http://127.0.0.1:{relay_port}/alertmanager", "send_resolved": True}],
            }
        ],
    }
    atomic_write_text(folder / "alertmanager.yml", yaml.safe_dump(config, sort_keys=False))
    cmd = ["prometheus-alertmanager", f"--config.file={folder / 'alertmanager.yml'}", f"--storage.path={folder / 'data'}"]
    cmd += [f"--web.listen-address=127.0.0.1:{port}", f"--web.external-url=http://127.0.0.1:{port}"]
    cmd += ["--cluster.listen-address="]  # no gossip port on 0.0.0.0
    return spawn("alertmanager", cmd, root / "logs", env, root) | {"port": port}


def start_prometheus(root: Path, env: dict, repo: Path, scraped: dict[str, tuple[int, str]], alertmanager: int) -> dict:
    """Prometheus on ``scraped`` (job name: port and metrics path) and the ``fmnist serve`` targets, alerting to
    ``alertmanager``'s port."""
    port, folder = free_port(), root / "prometheus"
    (folder / "rules").mkdir(parents=True, exist_ok=True)
    targets(root).mkdir(parents=True, exist_ok=True)
    jobs = {"prometheus": (port, "/metrics"), "alertmanager": (alertmanager, "/metrics"), **scraped}
    config = {
        "global": {"scrape_interval": INTERVAL, "evaluation_interval": INTERVAL},
        "rule_files": [str(repo / "monitoring" / "alerts.yml"), str(folder / "rules" / "*.yml")],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{alertmanager}"]}]}]},
        "scrape_configs": [
            *(
                {"job_name": job, "metrics_path": path, "static_configs": [{"targets": [f"127.0.0.1:{p}"]}]}
                for job, (p, path) in jobs.items()
            ),
            {
                "job_name": "fmnist-serve",
                "file_sd_configs": [{"files": [str(targets(root) / "*.json")], "refresh_interval": INTERVAL}],
            },
        ],
    }
    atomic_write_text(folder / "prometheus.yml", yaml.safe_dump(config, sort_keys=False))
    cmd = ["prometheus", f"--config.file={folder / 'prometheus.yml'}", f"--storage.tsdb.path={folder / 'data'}"]
    cmd += [f"--web.listen-address=127.0.0.1:{port}", f"--web.external-url=http://127.0.0.1:{port}"]
    cmd += ["--web.enable-lifecycle", f"--rules.alert.resend-delay={RESEND}"]
    return spawn("prometheus", cmd, root / "logs", env, root) | {"port": port}
