"""Serving latency over HTTP, server against server: ``python -m benchmarks.serving [--versions N,M]``.

Serves each registered version (default: the champion) in turn with MLflow's own server
(``mlflow models serve --env-manager local``, what ``fmnist serve`` ran until it had its own
tensor-JSON route) and with ``fmnist serve``'s, on 127.0.0.1, and measures from a client on
loopback, over one kept-alive connection, with the request bodies encoded beforehand:

- one test image per request, as tensor JSON: 50 requests after 5 warm-up ones (p50, p90), and on
  ``fmnist serve`` also as a binary tensor (the Open Inference Protocol's, ``/v2/models/<name>/infer``);
- 1,000 test images in one request, median of 5 after a warm-up: tensor JSON (``{"inputs": ...}``),
  ``text/csv`` rows in the CSV edition's layout where the version takes them, and on ``fmnist serve``
  a binary tensor of uint8 pixels with a binary answer;
- then the whole test set, 1,000 images a request, for the test accuracy a client gets, next to the
  one the version was registered with and the one ``mlflow.pyfunc.load_model("models:/<name>@<alias>")``
  gives in this process;
- that in-process model's own predict on the same one image and 1,000 images (uint8 arrays), the
  floor a server's times are compared with;
- the swap: ``fmnist serve`` following ``@champion`` on a copy of the registry with the first version
  registered twice, the alias moved under a stream of single images, and back (:func:`swap_measure`).

Either server runs the model with the code the version was logged with (MLflow puts the model's
``code_paths`` first on ``sys.path``), so the two rows of a version differ only in the server.
Writes ``<out>/serving.json`` and ``<out>/serving.md`` (``out``: ``reports/``).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import traffic
from benchmarks.report import write_pair
from pipeline.adapters import host, open_inference
from pipeline.adapters.files import load_split
from pipeline.adapters.mlflow import registry
from pipeline.adapters.mlflow.store import tracking_uri
from pipeline.adapters.paths import Paths
from pipeline.commands.serve import serve_command
from pipeline.core.config import load_params
from pipeline.core.images import PIXEL_COLUMNS
from pipeline.stack.processes import StackError, free_port, wait_for_url

SINGLES, WARMUP, BATCH, BATCH_REPS = 50, 5, 1000, 5


def _post(
    conn: http.client.HTTPConnection, body: bytes, content_type: str | dict[str, str], path: str = "/invocations"
) -> tuple[float, int, bytes]:
    headers = {"Content-Type": content_type} if isinstance(content_type, str) else content_type
    start = time.perf_counter()
    conn.request("POST", path, body=body, headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    return time.perf_counter() - start, resp.status, data


def _singles(conn: http.client.HTTPConnection, requests: list[tuple[bytes, str | dict]], path: str) -> list[float]:
    """Seconds per request (a body and its content type or headers) after the warm-up ones."""
    times = []
    for i, (body, headers) in enumerate(requests):
        seconds, status, data = _post(conn, body, headers, path)
        assert status == 200, data[:500]
        if i >= WARMUP:
            times.append(seconds)
    return times


def _p(times: list[float], q: float) -> float:
    """The q-quantile of ``times`` in milliseconds."""
    ms = sorted(t * 1000 for t in times)
    return round(statistics.median(ms) if q == 0.5 else ms[int(q * len(ms)) - 1], 2)


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


def start_server(cmd: list[str], port: int, log: Path, uri: str | None = None) -> subprocess.Popen:
    """Start a server on ``port`` (on the store at ``uri``, default the project's) and wait until it answers /ping."""
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])  # uvicorn for mlflow's
    env = os.environ | {"MLFLOW_TRACKING_URI": uri or tracking_uri(), "PATH": path}
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_url(f"the server on port {port}", f"http://127.0.0.1:{port}/ping", proc.pid, log, timeout=240)
    except StackError:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        raise
    return proc


def _http_accuracy(conn: http.client.HTTPConnection, x: np.ndarray, y: np.ndarray) -> float:
    predicted = []
    for i in range(0, len(x), BATCH):
        _, status, data = _post(conn, json.dumps({"inputs": x[i : i + BATCH].tolist()}).encode(), "application/json")
        assert status == 200, data[:500]
        predicted += [p["class_index"] for p in json.loads(data)["predictions"]]
    return float(np.mean(np.array(predicted) == y))


def measure(server: str, model_name: str, version: str, x: np.ndarray, y: np.ndarray) -> dict:
    """Serve one version with ``server``: time single-image and 1,000-image requests in each form it takes, then score the
    test set."""
    port = free_port()
    fmnist = server.startswith("fmnist serve")
    singles = [(json.dumps({"inputs": x[i : i + 1].tolist()}).encode(), "application/json") for i in range(WARMUP + SINGLES)]
    binary_singles = [open_inference.encode_request(x[i : i + 1]) for i in range(WARMUP + SINGLES)]
    batch = json.dumps({"inputs": x[:BATCH].tolist()}).encode()
    binary, binary_headers = open_inference.encode_request(x[:BATCH])
    rows = x[:BATCH].reshape(BATCH, 784)
    csv = (",".join(PIXEL_COLUMNS) + "\n" + "\n".join(",".join(map(str, r)) for r in rows.tolist()) + "\n").encode()
    v2 = f"/v2/models/{model_name}/infer"
    with tempfile.TemporaryDirectory(prefix="fmnist-serving-bench-") as tmp:
        proc = start_server(_command(server, model_name, version, port, Path(tmp)), port, Path(tmp) / "serve.log")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            single = _singles(conn, singles, "/invocations")
            single_binary = _singles(conn, binary_singles, v2) if fmnist else []
            _post(conn, batch, "application/json")
            batch_s = [_post(conn, batch, "application/json")[0] for _ in range(BATCH_REPS)]
            seconds, status, _ = _post(conn, csv, "text/csv")
            csv_s = [_post(conn, csv, "text/csv")[0] for _ in range(BATCH_REPS)] if status == 200 else []
            binary_s = []
            if fmnist:
                assert _post(conn, binary, binary_headers, v2)[1] == 200
                binary_s = [_post(conn, binary, binary_headers, v2)[0] for _ in range(BATCH_REPS)]
            http_accuracy = _http_accuracy(conn, x, y)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
    tags = registry.version_tags(model_name, version)
    return {
        "server": server,
        "version": version,
        "tta": tags.get("tta", "none"),
        "registered_test_accuracy": float(tags["test_accuracy"]) if "test_accuracy" in tags else None,
        "http_test_accuracy": http_accuracy,
        "single_p50_ms": _p(single, 0.5),
        "single_p90_ms": _p(single, 0.9),
        "single_binary_p50_ms": _p(single_binary, 0.5) if single_binary else None,
        "batch_1000_json_s": round(statistics.median(batch_s), 3),
        "batch_1000_csv_s": round(statistics.median(csv_s), 3) if csv_s else None,
        "batch_1000_binary_s": round(statistics.median(binary_s), 3) if binary_s else None,
        "requests": {"single": len(single), "single_binary": len(single_binary), "batch": len(batch_s), "csv": len(csv_s),
                     "binary": len(binary_s)},
    }  # fmt: skip


def swap_measure(model_name: str, version: str, x: np.ndarray) -> dict:
    """``fmnist serve`` following ``@champion`` (every ``serve.poll_s`` seconds, its log on) under a stream of single
    images, on a copy of the project's registry with a second version of ``version``: the alias moved to it and back,
    each timed from the move to the first answer by the new version, with the server's own load-and-check time."""
    params = load_params()
    if not tracking_uri().startswith("sqlite:///"):
        return {"skipped": f"the swap is measured on a copy of a SQLite store, not on {tracking_uri()}"}
    with tempfile.TemporaryDirectory(prefix="fmnist-swap-bench-") as tmp:
        uri, other = traffic.scratch_registry(Path(tracking_uri().removeprefix("sqlite:///")), Path(tmp), model_name, version)
        port, log = free_port(), Path(tmp) / "serve.log"
        proc = start_server(serve_command(params, None, "127.0.0.1", port, Path(tmp) / "predictions"), port, log, uri)
        stream = traffic.Stream(port, json.dumps({"inputs": x[:1].tolist()}).encode())
        stream.start()
        try:
            stream.wait_for(version, 0, 60)
            time.sleep(2)
            timeout = params.serve.poll_s + 240
            swaps = [traffic.swap(stream, uri, model_name, other, timeout)]
            time.sleep(2)
            swaps.append(traffic.swap(stream, uri, model_name, version, timeout))
            time.sleep(1)
        finally:
            stream.stop()
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        loads = [float(s) for s in re.findall(r"loaded and checked in ([\d.]+) s", log.read_text())]
    for record, load in zip(swaps, loads, strict=True):
        record["load_s"] = load
    answers = stream.answers
    return {
        "poll_s": params.serve.poll_s,
        "versions": [version, other],
        "swaps": swaps,
        "requests": len(answers),
        "failed": sum(a.status != 200 for a in answers),
        "p50_ms": traffic.latency_ms(answers),
    }


def _median_ms(call, n: int = SINGLES, warmup: int = WARMUP) -> float:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return _p(times, 0.5)


def in_process(model_name: str, ref: str, x: np.ndarray, y: np.ndarray) -> dict:
    """``mlflow.pyfunc.load_model("models:/<name>@<alias>")`` (or ``/<version>``) in this process: its test accuracy, the
    times of its predict on one image (p50 of 50 after 5 warm-up calls) and on 1,000 (median of 5 after one), and where one
    image's time goes: the compiled forward pass with and without the test-time augmentation's views, and ``classify``
    (the input checks and the answer's columns, what ``fmnist serve`` calls)."""
    import mlflow

    from pipeline.core.inference import forward

    mlflow.set_tracking_uri(tracking_uri())
    uri = f"models:/{model_name}/{ref}" if ref.isdigit() else f"models:/{model_name}@{ref}"
    model = mlflow.pyfunc.load_model(uri)
    predicted = model.predict(x)["class_index"].to_numpy()
    one, one_float = x[:1], (x[:1, ..., None] / np.float32(255)).astype(np.float32)
    classifier = model.unwrap_python_model()
    plain = forward(classifier.model, "none")
    batch = []
    model.predict(x[:BATCH])
    for _ in range(BATCH_REPS):
        start = time.perf_counter()
        model.predict(x[:BATCH])
        batch.append(time.perf_counter() - start)
    return {
        "uri": uri,
        "test_accuracy": float(np.mean(predicted == y)),
        "single_p50_ms": _median_ms(lambda: model.predict(one)),
        "classify_p50_ms": _median_ms(lambda: classifier.classify(one)),
        "forward_p50_ms": _median_ms(lambda: classifier.probabilities(one_float)),
        "forward_without_tta_p50_ms": _median_ms(lambda: plain(one_float)),
        "batch_1000_s": round(statistics.median(batch), 3),
        "batch_1000_times_s": [round(t, 4) for t in batch],
    }


def both_sides(before: dict, after: dict) -> dict:
    """The in-process figures measured before and after the servers ran, as one: the median of the two rounds' 1,000-image
    times together, and of their one-image p50s (the machine is shared: a server is compared with both)."""
    keys = ("single_p50_ms", "classify_p50_ms", "forward_p50_ms", "forward_without_tta_p50_ms")
    return (
        {k: round(statistics.mean([before[k], after[k]]), 2) for k in keys}
        | {"batch_1000_s": round(statistics.median(before["batch_1000_times_s"] + after["batch_1000_times_s"]), 3)}
        | {"uri": before["uri"], "test_accuracy": before["test_accuracy"], "rounds": [before, after]}
    )


def markdown(doc: dict) -> str:
    lines = [
        "# Serving latency over HTTP",
        "",
        f"`{doc['command']}` on {doc['date']}, {doc['machine']}: each server on 127.0.0.1, a client on loopback "
        "over one kept-alive connection, bodies encoded beforehand (tensor JSON of uint8 pixels; CSV in the layout "
        "of Fashion-MNIST's CSV edition; binary: the Open Inference Protocol's binary tensor of uint8 pixels, with a "
        "binary answer).",
        "",
        "| server | version | TTA | one image, p50 | one image, p90 | one image, binary, p50 | 1,000 images, JSON "
        "| 1,000 images, CSV | 1,000 images, binary | test accuracy over HTTP (registered) |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in doc["rows"]:
        csv = f"{m['batch_1000_csv_s']:.3f} s" if m["batch_1000_csv_s"] is not None else "not accepted"
        lines.append(
            f"| `{m['server']}` | {m['version']} | {m['tta']} | {m['single_p50_ms']:.1f} ms | {m['single_p90_ms']:.1f} ms "
            f"| {_ms(m.get('single_binary_p50_ms'))} | {m['batch_1000_json_s']:.3f} s | {csv} "
            f"| {_s(m.get('batch_1000_binary_s'))} | {_pct(m.get('http_test_accuracy'))} "
            f"({_pct(m.get('registered_test_accuracy'))}) |"
        )
    for version, m in doc["in_process"].items():
        lines.append(
            f"| in-process `mlflow.pyfunc` predict | {version} | | {m['single_p50_ms']:.1f} ms | | | | "
            f"| {m['batch_1000_s']:.3f} s | {_pct(m['test_accuracy'])} |"
        )
    lines += [
        "",
        f"One image: {SINGLES} requests after {WARMUP} warm-up ones. 1,000 images: median of {BATCH_REPS} after a warm-up. "
        "Binary: not accepted by `mlflow models serve`. In-process: `mlflow.pyfunc.load_model` of the same version, "
        "predict on uint8 arrays, in the bench's process with no server running, before the servers and after them "
        "(one-image figures: the mean of the two rounds' p50s; 1,000 images: the median of both rounds' times).",
        "`mlflow models serve` runs the model with the code the version was logged with; `fmnist serve` with the installed "
        "project's, recording its metrics for `/metrics`, with its prediction log on (in a folder of the bench's) or off.",
        "",
    ]
    for version in dict.fromkeys(m["version"] for m in doc["rows"]):
        row = {m["server"]: m for m in doc["rows"] if m["version"] == version}
        on, off, mlflow = row.get("fmnist serve"), row.get("fmnist serve, no log"), row.get("mlflow models serve")
        floor = doc["in_process"].get(version)
        if on and floor and on.get("batch_1000_binary_s"):
            lines += [
                f"Version {version}, 1,000 images as binary through `fmnist serve` (log and metrics on): "
                f"{on['batch_1000_binary_s']:.3f} s, {on['batch_1000_binary_s'] / floor['batch_1000_s']:.2f}x the in-process "
                f"predict's {floor['batch_1000_s']:.3f} s (goal: at most 1.2x).",
                "",
            ]
        if on and mlflow:
            lines += [
                f"Version {version}, one image through `fmnist serve` (log and metrics on): {on['single_p50_ms']:.1f} ms at "
                f"the median as tensor JSON, {on['single_p50_ms'] / mlflow['single_p50_ms']:.2f}x `mlflow models serve`'s "
                f"{mlflow['single_p50_ms']:.1f} ms; as binary {_ms(on.get('single_binary_p50_ms'))} (goal: at most 0.8x).",
                "",
            ]
        if on and floor:
            lines += [
                f"Where one image's time goes, version {version} (p50s): the compiled forward pass "
                f"{floor['forward_p50_ms']:.2f} ms with its {on['tta']} views ({floor['forward_without_tta_p50_ms']:.2f} ms "
                f"without), `classify` (input checks, the answer's columns) {floor['classify_p50_ms']:.2f} ms, MLflow's "
                f"pyfunc `predict` around it {floor['single_p50_ms']:.2f} ms; over HTTP as binary "
                f"{_ms(on.get('single_binary_p50_ms'))}, so about "
                f"{(on.get('single_binary_p50_ms') or on['single_p50_ms']) - floor['classify_p50_ms']:.1f} ms go to HTTP, the "
                "hand-off to a worker thread, the metrics and the log (differences of medians of a shared machine: "
                "read them to a millisecond).",
                "",
            ]
        if on and off:
            lines += [
                f"The prediction log's cost, version {version}: {on['single_p50_ms'] - off['single_p50_ms']:+.2f} ms at the "
                f"median for one image, {on['batch_1000_json_s'] - off['batch_1000_json_s']:+.3f} s for 1,000 as JSON.",
                "",
            ]
    if "swaps" in doc.get("swap", {}):
        swap = doc["swap"]
        one, back = swap["swaps"]
        lines += [
            f"Swap: `fmnist serve` following `@champion` (checked every {swap['poll_s']:g} s, log and metrics on) under "
            f"a stream of single images, on a copy of the registry with version {swap['versions'][0]} registered again as "
            f"{swap['versions'][1]}. The alias moved to version {one['to']}: its first answer {one['seconds']:.1f} s later "
            f"(the server loaded and checked it in {one['load_s']:.1f} s; the rest is the wait for its next check); moved "
            f"back: {back['seconds']:.1f} s ({back['load_s']:.1f} s). {swap['requests']:,} requests, "
            f"{swap['failed']} failed; p50 {swap['p50_ms']:.1f} ms, at most {max(one['max_ms'], back['max_ms']):.0f} ms "
            "while a version loaded beside the served one.",
            "",
        ]
    elif "skipped" in doc.get("swap", {}):
        lines += [f"Swap: not measured ({doc['swap']['skipped']}).", ""]
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s"


def machine_name() -> str:
    return host.name()


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
        "machine": machine_name(),
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
        "rows": [],
    }
    doc["in_process"] = {}
    for ref in args.versions.split(","):
        version = resolve.get(ref, ref)
        before = in_process(name, ref, x, y)  # while no server runs, before and after them
        print(json.dumps(before), flush=True)
        for server in SERVERS:
            doc["rows"].append(measure(server, name, version, x, y))
            print(json.dumps(doc["rows"][-1]), flush=True)
        after = in_process(name, ref, x, y)
        print(json.dumps(after), flush=True)
        doc["in_process"][version] = both_sides(before, after)
    first = resolve.get(args.versions.split(",")[0], args.versions.split(",")[0])
    doc["swap"] = swap_measure(name, first, x)
    print(json.dumps(doc["swap"]), flush=True)
    doc["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    write_pair(Path(args.out) if args.out else Paths().reports, "serving", doc, markdown(doc))
    print(markdown(doc))
    return doc


if __name__ == "__main__":
    main()
