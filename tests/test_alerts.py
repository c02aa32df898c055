"""Alerts (pipeline/adapters/alerts.py): one apprise URL, a real receiver on 127.0.0.1, and the failures that must not spread.

Who alerts (the gate, the monitor, a server's refused swap) is tested where each one runs:
tests/test_promote.py, tests/test_monitor.py and tests/test_follow.py.
"""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
from conftest import ROOT, AlertReceiver

from pipeline.adapters import alerts
from pipeline.core.errors import ConfigError
from pipeline.stack.processes import free_port


def test_an_alert_reaches_the_receiver_with_its_title_body_and_kind():
    receiver = AlertReceiver()
    try:
        assert alerts.destination({"FMNIST_ALERTS_URL": receiver.url}).send("gate", "version 3 promoted", "success")
        (got,) = receiver.wait(1)
        assert (got["title"], got["message"], got["type"]) == ("gate", "version 3 promoted", "success")
    finally:
        receiver.server.shutdown()


def test_a_malformed_destination_is_refused_naming_the_setting_and_keeping_its_token_out():
    with pytest.raises(ConfigError, match="FMNIST_ALERTS_URL='nonsense://...' is not an apprise URL") as refused:
        alerts.destination({"FMNIST_ALERTS_URL": "nonsense://secret-token/more"})
    assert "secret-token" not in str(refused.value)


def test_without_a_destination_nothing_is_sent_and_the_log_says_so_once(caplog):
    alerts._said.clear()
    caplog.set_level(logging.INFO, logger="pipeline.adapters.alerts")
    none = alerts.destination({})
    assert none.send("a", "b") is False and none.send("c", "d") is False
    assert [r.getMessage() for r in caplog.records] == ["no alert destination (FMNIST_ALERTS_URL is not set): a: not sent"]


def test_a_destination_that_does_not_answer_is_logged_and_never_raises(caplog):
    down = alerts.destination({"FMNIST_ALERTS_URL": f"json://127.0.0.1:{free_port()}/alerts"})
    assert down.send("drift", "window drifted") is False
    assert "alert 'drift' not delivered to json://..." in caplog.text


def test_fmnist_serve_refuses_a_malformed_destination_before_it_loads_a_model(tmp_path):
    cmd = [sys.executable, "-m", "pipeline.adapters.mlflow.server", "fashion-mnist-cnn", "--version", "1", "--class-names", "[]"]
    env = {"PATH": "/usr/bin:/bin", "FMNIST_ALERTS_URL": "not a url", "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/m.db"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "error: FMNIST_ALERTS_URL='<not a URL>' is not an apprise URL" in done.stderr
