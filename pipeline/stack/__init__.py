"""The team stack on one machine: a tool that supervises the servers a team shares, on 127.0.0.1, all state in one folder.

- PostgreSQL (:mod:`~pipeline.stack.postgres`): databases ``mlflow``, ``prefect``,
  ``predictions`` (what every ``fmnist serve`` on the stack answered) and ``optuna`` (``fmnist tune``'s studies), and
  the registry's shared lock;
- an S3 endpoint (:mod:`~pipeline.stack.s3`): ``moto_server``, standing in for S3 or MinIO, with the buckets
  ``fmnist-mlflow`` (MLflow's artifacts) and ``fmnist-dvc`` (the DVC remote), copied to disk at ``down``;
- an MLflow server on the PostgreSQL, serving artifacts from the S3 bucket, and a Prefect server on it
  (:mod:`~pipeline.stack.lifecycle`);
- a Prometheus scraping them and every ``fmnist serve`` started with the stack's environment, an Alertmanager, and
  the relay that passes their alerts and those of Prefect's automations on to ``FMNIST_ALERTS_URL``
  (:mod:`~pipeline.stack.monitoring`, :mod:`~pipeline.stack.relay`);
- N Prefect process workers, each in its own git clone (:mod:`~pipeline.stack.workers`);
- what the registry and ``dvc.lock`` name but the endpoint lacks (:mod:`~pipeline.stack.audit`);
- the process helpers the stack, the tests and the bench share (:mod:`~pipeline.stack.processes`).

It is not an adapter: it starts programs and watches them, and of their clients uses only S3's
(boto3), to create, copy and check the buckets. Production differences (TLS, auth, real S3, managed PostgreSQL) are in docs/team.md.
"""

from pipeline.stack.lifecycle import down, environment, is_up, load, start_server, status, stop, up
from pipeline.stack.processes import StackError
from pipeline.stack.workers import POOL

__all__ = ["POOL", "StackError", "down", "environment", "is_up", "load", "start_server", "status", "stop", "up"]
