"""A soak of ``fmnist serve``: ``python -m benchmarks.soak [--minutes 10] [--clients 2] [--out reports/]``.

The champion served as ``fmnist serve`` serves it (following ``@champion``, its prediction log and
metrics on), on a copy of the project's registry with the champion registered again as a second
version (:func:`benchmarks.traffic.scratch_registry`). ``--clients`` streams of single test images
(tensor JSON, each on its own kept-alive connection, back to back: the highest rate the machine
takes) run for ``--minutes``; at the middle the alias moves to the second version, at three
quarters back. Every 10 s it samples the server's resident memory and the requests answered.

Writes ``<out>/soak.json`` and ``<out>/soak.md``: requests and their rate, failures (any status but
200, or a broken connection), latency, RSS from the first minute to the end, and the two swaps.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

from benchmarks import traffic
from benchmarks.report import write_pair
from benchmarks.serving import machine_name, start_server
from pipeline.adapters.files import load_split
from pipeline.adapters.mlflow import registry
from pipeline.adapters.mlflow.store import tracking_uri
from pipeline.adapters.paths import Paths
from pipeline.commands.serve import serve_command
from pipeline.core.config import load_params
from pipeline.stack.processes import free_port

SAMPLE_S = 10


def soak(minutes: float, clients: int) -> dict:
    params = load_params()
    name = params.registry.model_name
    version = registry.aliases(name)[traffic.ALIAS]
    x, _ = load_split(Paths().split("test"))
    seconds = minutes * 60
    with tempfile.TemporaryDirectory(prefix="fmnist-soak-") as tmp:
        uri, other = traffic.scratch_registry(Path(tracking_uri().removeprefix("sqlite:///")), Path(tmp), name, version)
        port, log = free_port(), Path(tmp) / "serve.log"
        proc = start_server(serve_command(params, None, "127.0.0.1", port, Path(tmp) / "predictions"), port, log, uri)
        server = psutil.Process(proc.pid)
        bodies = [json.dumps({"inputs": x[i : i + 1].tolist()}).encode() for i in range(clients)]
        streams = [traffic.Stream(port, body, limit=10**9, seconds=seconds + 600) for body in bodies]
        samples, swaps, plan = [], [], [(0.5, other), (0.75, version)]
        start = time.monotonic()
        for stream in streams:
            stream.start()
        try:
            while (elapsed := time.monotonic() - start) < seconds:
                if plan and elapsed >= plan[0][0] * seconds:
                    _, to = plan.pop(0)
                    swaps.append(traffic.swap(streams[0], uri, name, to, params.serve.poll_s + 240) | {"at_s": round(elapsed)})
                    continue
                time.sleep(min(SAMPLE_S, seconds - elapsed))
                answered = sum(len(s.answers) for s in streams)
                samples.append({"s": round(time.monotonic() - start), "rss_mb": round(server.memory_info().rss / 2**20, 1),
                                "answered": answered})  # fmt: skip
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
        finally:
            for stream in streams:
                stream.stop()
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
    answers = [a for s in streams for a in s.answers]
    wall = max(a.at for a in answers) - start
    steady = [s["rss_mb"] for s in samples if s["s"] >= 60]
    return {
        "command": "python -m benchmarks.soak " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine_name(),
        "minutes": minutes,
        "clients": clients,
        "poll_s": params.serve.poll_s,
        "versions": [version, other],
        "requests": len(answers),
        "per_second": round(len(answers) / wall, 1),
        "failed": sum(a.status != 200 for a in answers),
        "statuses": sorted({a.status for a in answers}),
        "answered_by": {v: sum(a.version == v for a in answers) for v in (version, other)},
        "p50_ms": traffic.latency_ms(answers, 0.5),
        "p99_ms": traffic.latency_ms(answers, 0.99),
        "max_ms": round(1000 * max(a.seconds for a in answers), 1),
        "rss_mb": {
            "first_minute": samples[min(5, len(samples) - 1)]["rss_mb"],
            "min_after_1_min": min(steady, default=None),
            "max_after_1_min": max(steady, default=None),
            "end": samples[-1]["rss_mb"],
        },  # fmt: skip
        "swaps": swaps,
        "log_dropped": sum(float(m) for m in re.findall(r"^fmnist_serve_log_dropped_total (\S+)$", metrics, re.MULTILINE)),
        "swaps_counted": sum(float(m) for m in re.findall(r"^fmnist_serve_swaps_total (\S+)$", metrics, re.MULTILINE)),
        "samples": samples,
    }


def markdown(doc: dict) -> str:
    rss, (one, back) = doc["rss_mb"], doc["swaps"]
    lines = [
        "# Soak of `fmnist serve`",
        "",
        f"`{doc['command'].strip()}` on {doc['date']}, {doc['machine']}: the champion served as `fmnist serve` serves it "
        f"(following `@champion` every {doc['poll_s']:g} s, prediction log and metrics on), {doc['clients']} clients on "
        f"127.0.0.1 sending single test images back to back for {doc['minutes']:g} min, on a copy of the registry with "
        f"version {doc['versions'][0]} registered again as {doc['versions'][1]}.",
        "",
        "| requests | per second | failed | p50 | p99 | max | RSS at 1 min | RSS after 1 min (min-max) | RSS at the end |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {doc['requests']:,} | {doc['per_second']:,.0f} | {doc['failed']} | {doc['p50_ms']:.1f} ms | {doc['p99_ms']:.1f} ms "
        f"| {doc['max_ms']:.0f} ms | {rss['first_minute']:.0f} MiB | {rss['min_after_1_min']:.0f}-{rss['max_after_1_min']:.0f} MiB "
        f"| {rss['end']:.0f} MiB |",
        "",
        f"Swaps: at {one['at_s']} s the alias moved to version {one['to']}, answering {one['seconds']:.1f} s later; at "
        f"{back['at_s']} s back to {back['to']}, {back['seconds']:.1f} s later (each within the poll and the load; "
        f"{one['failed'] + back['failed']} requests failed during them, the slowest took "
        f"{max(one['max_ms'], back['max_ms']):.0f} ms). Answers by version: "
        + ", ".join(f"{v}: {n:,}" for v, n in doc["answered_by"].items())
        + f". Statuses seen: {', '.join(map(str, doc['statuses']))}.",
        "",
        f"Prediction-log records dropped: {doc['log_dropped']:.0f}; swaps the server counted: {doc['swaps_counted']:.0f}.",
        "",
        f"RSS every {SAMPLE_S} s (MiB): " + ", ".join(f"{s['rss_mb']:.0f}" for s in doc["samples"]) + ".",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--out", help="folder for soak.json and soak.md (default: reports/)")
    args = parser.parse_args(argv)
    doc = soak(args.minutes, args.clients)
    write_pair(Path(args.out) if args.out else Paths().reports, "soak", doc, markdown(doc))
    print(markdown(doc))
    return doc


if __name__ == "__main__":
    main()
