"""Serving latency over HTTP, server against server: ``python -m benchmarks.serving [--versions N,M]``.

Serves each registered version (default: the champion) in turn with MLflow's own server
(``mlflow models serve --env-manager local``, what ``fmnist serve`` ran until it had its own
tensor-JSON route) and with ``fmnist serve``'s, on 127.0.0.1, and measures from a client on
loopback, over one kept-alive connection, with the request bodies encoded beforehand:

- one test image per request: 50 requests after 5 warm-up ones (p50, p90);
- 1,000 test images in one tensor-JSON request (``{"inputs": ...}``): median of 5 after a warm-up;
- the same 1,000 images as ``text/csv`` rows in the CSV edition's layout, where the version takes them;
- then the whole test set, 1,000 images a request, for the test accuracy a client gets, next to the
  one the version was registered with and the one ``mlflow.pyfunc.load_model("models:/<name>@<alias>")``
  gives in this process.

Either server runs the model with the code the version was logged with (MLflow puts the model's
``code_paths`` first on ``sys.path``), so the two rows of a version differ only in the server.
Writes ``<out>/serving.json`` and ``<out>/serving.md`` (``out``: ``reports/``).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.report import machine
from pipeline.adapters.files import load_split, write_json
from pipeline.adapters.mlflow import registry
from pipeline.adapters.mlflow.store import tracking_uri
from pipeline.adapters.paths import Paths
from pipeline.commands.serve import serve_command
from pipeline.core.config import load_params
from pipeline.core.images import PIXEL_COLUMNS
from pipeline.stack.processes import StackError, free_port, wait_for_url

SINGLES, WARMUP, BATCH, BATCH_REPS = 50, 5, 1000, 5


def _post(conn: http.client.HTTPConnection, body: bytes, content_type: str) -> tuple[float, int, bytes]:
    start = time.perf_counter()
    conn.request("POST", "/invocations", body=body, headers={"Content-Type": content_type})
    resp = conn.getresponse()
    data = resp.read()
    return time.perf_counter() - start, resp.status, data


SERVERS = ("mlflow models serve", "fmnist serve, no log", "fmnist serve")


def _command(server: str, model_name: str, version: str, port: int, work: Path) -> list[str]:
    if server.startswith("fmnist serve"):  # pinned: the same version as MLflow's; the log in a folder of the bench's
        return serve_command(load_params(), version, "127.0.0.1", port, None if "no log" in server else work / "predictions")
    uri = f"models:/{model_name}/{version}"
    return [
        sys.executable,
        "-m",
        "mlflow",
        "models",
        "serve",
        "-m",
        uri,
        "--env-manager",
        "local",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
    ]


def _serve(server: str, model_name: str, version: str, port: int, log: Path) -> subprocess.Popen:
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])  # uvicorn for mlflow's
    env = os.environ | {"MLFLOW_TRACKING_URI": tracking_uri(), "PATH": path}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            _command(server, model_name, version, port, log.parent),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for_url(f"the server of version {version}", f"http://127.0.0.1:{port}/ping", proc.pid, log, timeout=240)
    except StackError:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        raise
    return proc


def python_api_accuracy(model_name: str, ref: str, x: np.ndarray, y: np.ndarray) -> float:
    """Test accuracy of ``models:/<name>@<alias>`` (or ``/<version>``) loaded with plain ``mlflow.pyfunc``."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    uri = f"models:/{model_name}/{ref}" if ref.isdigit() else f"models:/{model_name}@{ref}"
    predicted = mlflow.pyfunc.load_model(uri).predict(x)["class_index"].to_numpy()
    return float(np.mean(predicted == y))


def _http_accuracy(conn: http.client.HTTPConnection, x: np.ndarray, y: np.ndarray) -> float:
    predicted = []
    for i in range(0, len(x), BATCH):
        _, status, data = _post(conn, json.dumps({"inputs": x[i : i + BATCH].tolist()}).encode(), "application/json")
        assert status == 200, data[:500]
        predicted += [p["class_index"] for p in json.loads(data)["predictions"]]
    return float(np.mean(np.array(predicted) == y))


def measure(server: str, model_name: str, version: str, x: np.ndarray, y: np.ndarray) -> dict:
    """Serve one version with ``server``: time single-image, 1,000-image JSON and CSV requests, then score the test set."""
    port = free_port()
    singles = [json.dumps({"inputs": x[i : i + 1].tolist()}).encode() for i in range(WARMUP + SINGLES)]
    batch = json.dumps({"inputs": x[:BATCH].tolist()}).encode()
    rows = x[:BATCH].reshape(BATCH, 784)
    csv = (",".join(PIXEL_COLUMNS) + "\n" + "\n".join(",".join(map(str, r)) for r in rows.tolist()) + "\n").encode()
    with tempfile.TemporaryDirectory(prefix="fmnist-serving-bench-") as tmp:
        proc = _serve(server, model_name, version, port, Path(tmp) / "serve.log")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            single = []
            for i, body in enumerate(singles):
                seconds, status, data = _post(conn, body, "application/json")
                assert status == 200, data[:500]
                if i >= WARMUP:
                    single.append(seconds)
            _post(conn, batch, "application/json")
            batch_s = [_post(conn, batch, "application/json")[0] for _ in range(BATCH_REPS)]
            seconds, status, _ = _post(conn, csv, "text/csv")
            csv_s = [_post(conn, csv, "text/csv")[0] for _ in range(BATCH_REPS)] if status == 200 else []
            http_accuracy = _http_accuracy(conn, x, y)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
    single_ms = sorted(s * 1000 for s in single)
    tags = registry.version_tags(model_name, version)
    return {
        "server": server,
        "version": version,
        "tta": tags.get("tta", "none"),
        "registered_test_accuracy": float(tags["test_accuracy"]) if "test_accuracy" in tags else None,
        "http_test_accuracy": http_accuracy,
        "single_p50_ms": round(statistics.median(single_ms), 2),
        "single_p90_ms": round(single_ms[int(0.9 * len(single_ms)) - 1], 2),
        "batch_1000_json_s": round(statistics.median(batch_s), 3),
        "batch_1000_csv_s": round(statistics.median(csv_s), 3) if csv_s else None,
        "requests": {"single": len(single), "batch": len(batch_s), "csv": len(csv_s)},
    }


def markdown(doc: dict) -> str:
    lines = [
        "# Serving latency over HTTP",
        "",
        f"`{doc['command']}` on {doc['date']}, {doc['machine']}: each server on 127.0.0.1, a client on loopback "
        "over one kept-alive connection, bodies encoded beforehand (tensor JSON of uint8 pixels; CSV in the layout "
        "of Fashion-MNIST's CSV edition).",
        "",
        "| server | version | TTA | one image, p50 | one image, p90 | 1,000 images, JSON | 1,000 images, CSV "
        "| test accuracy over HTTP (registered) |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for m in doc["rows"]:
        csv = f"{m['batch_1000_csv_s']:.3f} s" if m["batch_1000_csv_s"] is not None else "not accepted"
        lines.append(
            f"| `{m['server']}` | {m['version']} | {m['tta']} | {m['single_p50_ms']:.1f} ms | {m['single_p90_ms']:.1f} ms "
            f"| {m['batch_1000_json_s']:.3f} s | {csv} | {_pct(m.get('http_test_accuracy'))} "
            f"({_pct(m.get('registered_test_accuracy'))}) |"
        )
    lines += [
        "",
        f"One image: {SINGLES} requests after {WARMUP} warm-up ones. 1,000 images: median of {BATCH_REPS} after a warm-up.",
        "`mlflow models serve` runs the model with the code the version was logged with; `fmnist serve` with the installed "
        "project's, recording its metrics for `/metrics`, with its prediction log on (in a folder of the bench's) or off.",
        "",
    ]
    for version in dict.fromkeys(m["version"] for m in doc["rows"]):
        row = {m["server"]: m for m in doc["rows"] if m["version"] == version}
        on, off = row.get("fmnist serve"), row.get("fmnist serve, no log")
        if on and off:
            lines += [
                f"The prediction log's cost, version {version}: {on['single_p50_ms'] - off['single_p50_ms']:+.2f} ms at the "
                f"median for one image, {on['batch_1000_json_s'] - off['batch_1000_json_s']:+.3f} s for 1,000 as JSON.",
                "",
            ]
    for ref, acc in doc.get("python_api", {}).items():
        lines += [f"`mlflow.pyfunc.load_model` of {ref} in this process: test accuracy {_pct(acc)}.", ""]
    return "\n".join(lines)


def _machine() -> str:
    found = machine()
    flags = f" ({', '.join(found['cpu_flags'])})" if found["cpu_flags"] else ""
    return f"{found['cpu']}{flags}, {found['cores']} cores"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serving", description=__doc__.splitlines()[0])
    parser.add_argument("--versions", default="champion", help="comma-separated versions or aliases (default: champion)")
    parser.add_argument("--out", help="folder for serving.json and serving.md (default: reports/)")
    args = parser.parse_args(argv)
    name = load_params().registry.model_name
    resolve = registry.aliases(name)
    x, y = load_split(Paths().split("test"))
    doc = {
        "command": "python -m benchmarks.serving " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": _machine(),
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
        "rows": [],
    }
    doc["python_api"] = {}
    for ref in args.versions.split(","):
        version = resolve.get(ref, ref)
        for server in SERVERS:
            doc["rows"].append(measure(server, name, version, x, y))
            print(json.dumps(doc["rows"][-1]), flush=True)
        uri = f"models:/{name}/{ref}" if ref.isdigit() else f"models:/{name}@{ref}"
        doc["python_api"][f"`{uri}` (version {version})"] = python_api_accuracy(name, ref, x, y)
    doc["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    out = Path(args.out) if args.out else Paths().reports
    write_json(out / "serving.json", doc)
    (out / "serving.md").write_text(markdown(doc))
    print(markdown(doc))
    return doc


if __name__ == "__main__":
    main()
