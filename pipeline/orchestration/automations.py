"""Prefect automations that alert on flow runs, from the server: a process that crashed cannot send its own alert.

Two automations on the Prefect server of ``PREFECT_API_URL``, each sending through one notification
block (a ``CustomWebhookNotificationBlock`` that posts ``{"title", "message", "type"}`` to the team
stack's relay, :mod:`pipeline.stack.relay`, which passes it on to ``FMNIST_ALERTS_URL``):

- ``fmnist: flow run failed or crashed``: any flow run of the server that enters Failed or Crashed;
- ``fmnist: flow run late``: a scheduled run that has not started when due (Prefect marks it Late
  ``PREFECT_API_SERVICES_LATE_RUNS_AFTER_SECONDS`` after its time, 15 s by default): no worker took it.

``fmnist stack up`` installs them (``python -m pipeline.orchestration.automations RELAY_URL``);
installing again replaces them, so there is one of each. The gate's decisions and drift alert
from the processes that make them (:mod:`pipeline.adapters.alerts`). The automation that marks a
silent variant run CRASHED, which then alerts here, is the workers' (:mod:`pipeline.orchestration.workers`).
"""

from __future__ import annotations

import sys

from prefect.automations import Automation, EventTrigger, Posture, SendNotification
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.client.orchestration import get_client

BLOCK = "fmnist-alerts"
_RUN = "{{ flow.name }}/{{ flow_run.name }}"
_LINK = "\n{{ flow_run|ui_url }}"
AUTOMATIONS = {
    "fmnist: flow run failed or crashed": (
        {"prefect.flow-run.Failed", "prefect.flow-run.Crashed"},
        f"flow run {_RUN} {{{{ flow_run.state.name }}}}",
        f"{_RUN} ended {{{{ flow_run.state.name }}}}: {{{{ flow_run.state.message }}}}{_LINK}",
    ),
    "fmnist: flow run late": (
        {"prefect.flow-run.Late"},
        f"flow run {_RUN} is late",
        f"{_RUN} was due at {{{{ flow_run.expected_start_time }}}} and has not started: is a worker polling its pool?{_LINK}",
    ),
}


def install(relay_url: str) -> list[str]:
    """Create (or replace) the notification block and the automations; returns the automations' names."""
    block = CustomWebhookNotificationBlock(
        name=BLOCK,
        url=f"{relay_url.rstrip('/')}/prefect",
        json_data={"title": "{{subject}}", "message": "{{body}}", "type": "failure"},
    )
    block_id = block.save(BLOCK, overwrite=True)
    with get_client(sync_client=True) as client:
        for name in AUTOMATIONS:
            for old in client.read_automations_by_name(name):
                client.delete_automation(old.id)
    for name, (events, subject, body) in AUTOMATIONS.items():
        Automation(
            name=name,
            description="installed by fmnist stack up (pipeline/orchestration/automations.py)",
            trigger=EventTrigger(
                match={"prefect.resource.id": "prefect.flow-run.*"},
                expect=events,
                posture=Posture.Reactive,
                threshold=1,
            ),
            actions=[SendNotification(block_document_id=block_id, subject=subject, body=body)],
        ).create()
    return list(AUTOMATIONS)


if __name__ == "__main__":
    print("\n".join(install(sys.argv[1])))
