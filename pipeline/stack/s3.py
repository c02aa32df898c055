"""The stack's S3 endpoint: ``moto_server`` on 127.0.0.1, its buckets, and their contents kept across a restart.

moto keeps objects in memory, so :func:`save` copies the buckets into ``<root>/s3/`` at ``fmnist
stack down`` (only what changed since the last copy) and :func:`restore` puts them back at ``up``.
Objects written after the last clean ``down`` are lost with an unclean stop (the process killed,
the machine rebooted); :func:`missing` tells which ones the registry and ``dvc.lock`` still name.
Real S3 and MinIO keep their objects: the copy stands in for that.
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

from pipeline.adapters.files import atomic_write_text
from pipeline.stack.processes import StackError, free_port, spawn, wait_for_url

BUCKETS = ("fmnist-mlflow", "fmnist-dvc")
KEYS = {"AWS_ACCESS_KEY_ID": "fmnist", "AWS_SECRET_ACCESS_KEY": "fmnist-secret", "AWS_DEFAULT_REGION": "us-east-1"}
HEALTH = "/moto-api/"
MANIFEST = "manifest.json"  # bucket -> key -> ETag of the copy


def client(port: int):
    """A boto3 S3 client on the endpoint at ``port`` with the stack's keys."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{port}",
        aws_access_key_id=KEYS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=KEYS["AWS_SECRET_ACCESS_KEY"],
        region_name=KEYS["AWS_DEFAULT_REGION"],
    )


def start(root: Path, env: dict, port: int | None = None) -> dict:
    """Start ``moto_server`` (on ``port``, or a free one), wait for it and create the buckets."""
    port = port or free_port()
    cmd = [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    info = spawn("s3", cmd, root / "logs", env, root) | {"port": port}
    wait_for_url("the S3 endpoint", f"http://127.0.0.1:{port}{HEALTH}", info["pid"], Path(info["log"]))
    s3 = client(port)
    for bucket in BUCKETS:
        s3.create_bucket(Bucket=bucket)
    return info


def _objects(s3, bucket: str) -> dict[str, str]:
    found = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        found |= {o["Key"]: o["ETag"] for o in page.get("Contents", [])}
    return found


def _local(folder: Path, key: str) -> Path:
    path = PurePosixPath(key)
    if path.is_absolute() or ".." in path.parts:
        raise StackError(f"the S3 endpoint holds a key that cannot be a file: {key!r}")
    return folder / path


def _read_manifest(folder: Path) -> dict[str, dict[str, str]]:
    path = folder / MANIFEST
    return json.loads(path.read_text()) if path.exists() else {}


def save(root: Path, port: int) -> dict[str, int]:
    """Copy the buckets into ``<root>/s3/``: new and changed objects are downloaded, deleted ones removed.

    Returns:
        Objects copied, kept (unchanged since the last copy) and removed.
    """
    folder, s3 = root / "s3", client(port)
    before, after, counts = _read_manifest(folder), {}, {"copied": 0, "kept": 0, "removed": 0}
    for bucket in BUCKETS:
        now, old = _objects(s3, bucket), before.get(bucket, {})
        changed = [k for k, tag in now.items() if old.get(k) != tag or not _local(folder / bucket, k).exists()]
        for key in changed:
            _local(folder / bucket, key).parent.mkdir(parents=True, exist_ok=True)
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda k, b=bucket: s3.download_file(b, k, str(_local(folder / b, k))), changed))
        for key in set(old) - set(now):
            _local(folder / bucket, key).unlink(missing_ok=True)
        after[bucket] = now
        counts["copied"] += len(changed)
        counts["kept"] += len(now) - len(changed)
        counts["removed"] += len(set(old) - set(now))
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / MANIFEST, json.dumps(after, indent=1))
    return counts


def restore(root: Path, port: int) -> int:
    """Upload the copy in ``<root>/s3/`` (from the last ``down``) into the new endpoint's buckets; returns the count."""
    folder, s3 = root / "s3", client(port)
    manifest, uploaded, after = _read_manifest(folder), 0, {}
    for bucket in BUCKETS:
        keys = [k for k in manifest.get(bucket, {}) if _local(folder / bucket, k).exists()]
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda k, b=bucket: s3.upload_file(str(_local(folder / b, k)), b, k), keys))
        uploaded += len(keys)
        after[bucket] = _objects(s3, bucket)  # the new ETags (a multipart upload's differ), so the next save copies nothing
    if manifest:
        atomic_write_text(folder / MANIFEST, json.dumps(after, indent=1))
    return uploaded


def keys(port: int, bucket: str) -> set[str]:
    """Every key the bucket holds."""
    return set(_objects(client(port), bucket))


def get_json(port: int, bucket: str, key: str) -> object:
    return json.loads(client(port).get_object(Bucket=bucket, Key=key)["Body"].read())
