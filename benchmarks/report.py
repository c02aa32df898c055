"""The benchmark's outputs: the machine it ran on, a table for the terminal, ``benchmarks.json`` and ``benchmarks.md``."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import yaml

from pipeline.adapters import host

PACKAGES = ("tensorflow", "keras", "numpy", "mlflow", "dvc", "prefect")
UNITS = {"x": "{:.2f}x", "s": "{:.1f} s", "ms": "{:.1f} ms", "GB": "{:.2f} GB", "min": "{:.1f} min", "acc": "{:.2%}"}
UNITS |= {"pts": "{:+.2f} points"}


def machine() -> dict:
    """CPU model and flags of interest, cores, memory, OS, Python and library versions, load now."""
    meminfo = Path("/proc/meminfo").read_text().split() if Path("/proc/meminfo").exists() else []
    return host.cpu() | {
        "memory_gb": round(int(meminfo[1]) / 1024**2, 1) if meminfo[:1] == ["MemTotal:"] else None,
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in PACKAGES},
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
    }


def _version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def fmt(value: float | None, unit: str) -> str:
    return "-" if value is None else UNITS.get(unit, "{:.3g} " + unit).format(value)


def verdict(m: dict) -> str:
    return m.get("status") or {True: "met", False: "not met"}[m["met"]]


def table(measures: list[dict]) -> str:
    """The summary for the terminal: one line per measure."""
    lines = [f"{'measure':<20} {'figure':>12}  {'goal':<40} result", "-" * 90]
    for m in measures:
        lines.append(f"{m['key']:<20} {fmt(m['figure'], m.get('unit', '')):>12}  {m['goal']:<40} {verdict(m)}")
    return "\n".join(lines)


def _rows_md(m: dict) -> list[str]:
    lines = ["| | median | min - max | n |", "|---|---:|---:|---:|"]
    for r in m["rows"]:
        shown = ("test_accuracy", "test_accuracies", "val_accuracy")
        extra = "; ".join(f"{k.replace('_', ' ')} {_show(v)}" for k, v in r.items() if k in shown)
        span = f"{fmt(r['min'], r['unit'])} - {fmt(r['max'], r['unit'])}" if r["n"] else "-"
        name = f"{r['name']} ({extra})" if extra else r["name"]
        lines.append(f"| {name} | {fmt(r['median'], r['unit'])} | {span} | {r['n']} |")
    return lines


def _show(v) -> str:
    return ", ".join(f"{a:.2%}" for a in v) if isinstance(v, list) else f"{v:.2%}"


def fast_variant_yaml(m: dict, defaults: dict) -> str:
    """The settings of a time-to-accuracy winner as a ``variants`` block (keys that differ from ``train``), with its TTA."""
    cfg = m.get("config") or {}
    keep = {k: v for k, v in cfg.items() if k == "architecture" or v != defaults.get(k)}
    if isinstance(keep.get("augment"), dict):
        keep["augment"] = {k: v for k, v in keep["augment"].items() if v != defaults.get("augment", {}).get(k)}
    name = m["key"].replace("time_to_", "fast")
    block = {"variants": {name: keep}} | ({"evaluate": {"tta": {name: m["tta"]}}} if m.get("tta", "none") != "none" else {})
    return yaml.safe_dump(block, sort_keys=False)


def _table_md(table: dict) -> list[str]:
    lines = ["| " + " | ".join(table["header"]) + " |", "|" + "---|" * len(table["header"])]
    return lines + ["| " + " | ".join(map(str, r)) + " |" for r in table["rows"]]


def markdown(doc: dict, defaults: dict) -> str:
    mc, measures = doc["machine"], doc["measures"]
    lines = ["# Benchmarks", ""]
    if doc["mode"] == "quick":
        lines += ["**QUICK MODE: tiny subsets, one repetition. It checks that the suite runs; do not quote these figures.**", ""]
    lines += [
        f"`{doc['command']}`, {doc['date']}, {doc['seconds'] / 60:.1f} min. Machine: {mc['cpu']} "
        f"({', '.join(mc['cpu_flags'])}), {mc['cores']} cores, {mc['memory_gb']} GB; {mc['os']}; Python {mc['python']}; "
        + ", ".join(f"{k} {v}" for k, v in mc["versions"].items())
        + f". Load average at start {mc['load_average_at_start']}, at end {doc['load_average_at_end']}.",
        "",
        "| measure | figure | goal | result |",
        "|---|---:|---|---|",
    ]
    lines += [f"| {m['title']} | {fmt(m['figure'], m.get('unit', ''))} | {m['goal']} | {verdict(m)} |" for m in measures]
    met = [m["key"] for m in measures if m["met"]]
    lines += ["", f"Goals met: {len(met)} of {len(measures)} ({', '.join(met) or 'none'}).", ""]
    retaken = [m["key"] for m in measures if m.get("measured")]
    if retaken:
        lines += [f"Taken again since, on their own (`--only`; when and where in each section): {', '.join(retaken)}.", ""]
    for m in measures:
        lines += [f"## {m['title']}", ""]
        lines += [f"Settings: {m['settings']}.", ""] if m.get("settings") else []
        lines += [f"Measured {m['where']}.", ""] if m.get("where") else []
        lines += [f"Measured on its own: {m['measured']}.", ""] if m.get("measured") else []
        lines += _table_md(m["table"]) + [""] if m.get("table") else []
        lines += _rows_md(m) + [""] if m["rows"] else [verdict(m), ""]
        if m["key"] == "best_over_seeds" and m.get("accuracies"):
            lines += [
                f"Test accuracy per seed: {_show(m['accuracies'])}; mean {m['figure']:.2%}, standard deviation "
                f"{100 * m['stdev']:.2f} points; {m['params']:,} parameters.",
                "",
                "Recall per class, mean over the seeds: " + ", ".join(f"{k} {v:.1%}" for k, v in m["recall"].items()) + ".",
                "",
            ]
        if m["key"].startswith("time_to_") and m.get("config"):
            lines += ["As a variant for `params.yaml`:", "", "```yaml", fast_variant_yaml(m, defaults).rstrip(), "```", ""]
    lines += _companions_md(doc.get("companions", {}))
    lines += [
        "## What we measured",
        "",
        "Training throughput of the tutorial's model, seconds per 55,000 images, no validation. Each probe",
        "is a short fit's epoch (12,800 images, scaled to 55,000; the wait in TensorFlow's teardown as `fit` returns is",
        "not in it: `benchmarks/profile.py` says why): one slow stretch of the machine moves it, so compare",
        "medians and read single figures as +-30%; the measures above are the quoted ones.",
        "",
    ]
    if doc.get("profile_measured"):
        lines += [f"Measured again on its own: {doc['profile_measured']}.", ""]
    lines += _rows_md({"rows": doc["profile"]}) + [""]
    return "\n".join(lines)


def companions(out: Path) -> dict:
    """The reports of the benchmarks with their own scripts in ``out`` (FLOP/s and serving), as they are."""
    found = {}
    for key in ("flops", "serving"):
        path = out / f"{key}.json"
        if path.exists():
            found[key] = json.loads(path.read_text())
    return found


def _companions_md(found: dict) -> list[str]:
    """Their headline figures, with the date and command each was measured with."""
    lines = []
    if "flops" in found:
        f = found["flops"]
        lines += ["## Training FLOP/s against this machine's peak (`python -m benchmarks.flops`)", ""]
        lines += [
            f"{f['date']}, {f['machine']['cpu']}; details in [flops.md](flops.md). Peak (matrix multiply, same run): "
            f"float32 {f['peak_gflops']['float32']:.0f}, bfloat16 {f['peak_gflops']['bfloat16']:.0f} GFLOP/s.",
            "",
            "| variant | precision | epoch | achieved | of the peak |",
            "|---|---|---:|---:|---:|",
        ]
        lines += [
            f"| {v['variant']} | {v['precision']} | {v['epoch_seconds']:.1f} s | {v['achieved_gflops']:.0f} GFLOP/s "
            f"| {v['fraction_of_peak']:.0%} |"
            for v in f["variants"]
        ] + [""]
    if "serving" in found:
        sv = found["serving"]
        lines += ["## Serving over HTTP, before (`mlflow models serve`) and after (`fmnist serve`)", ""]
        lines += [
            f"`{sv['command']}`, {sv['date']}; details in [serving.md](serving.md).",
            "",
            "| server | version | TTA | one image, p50 | 1,000 images, JSON | 1,000 images, binary "
            "| test accuracy over HTTP (registered) |",
            "|---|---:|---|---:|---:|---:|---:|",
        ]
        for r in sv["rows"]:
            got, registered = r.get("http_test_accuracy"), r.get("registered_test_accuracy")
            acc = f"{got:.2%} ({registered:.2%})" if got is not None and registered is not None else "-"
            binary = f"{r['batch_1000_binary_s']:.3f} s" if r.get("batch_1000_binary_s") else "not accepted"
            lines.append(
                f"| `{r['server']}` | {r['version']} | {r['tta']} | {r['single_p50_ms']:.1f} ms "
                f"| {r['batch_1000_json_s']:.3f} s | {binary} | {acc} |"
            )
        lines += [""] + [
            f"In-process `mlflow.pyfunc` predict of version {version}: {m['single_p50_ms']:.1f} ms for one image, "
            f"{m['batch_1000_s']:.3f} s for 1,000; test accuracy {m['test_accuracy']:.2%}."
            for version, m in sv.get("in_process", {}).items()
        ]
        lines += [""]
    return lines


def write(out: Path, doc: dict, params) -> tuple[Path, Path]:
    """``benchmarks.json`` and ``benchmarks.md`` in ``out``, with the headline figures of the FLOP/s and serving reports there."""
    from pipeline.adapters.files import atomic_write_text

    doc["companions"] = companions(out)
    defaults = dataclasses.asdict(params.train)
    md, js = out / "benchmarks.md", out / "benchmarks.json"
    atomic_write_text(js, json.dumps(doc, indent=2) + "\n")
    atomic_write_text(md, markdown(doc, defaults))
    return js, md


def write_pair(out: Path, stem: str, doc: dict, text: str) -> Path:
    """A bench's report as ``<out>/<stem>.json`` (its figures) and ``<out>/<stem>.md`` (``text``); returns the markdown's path."""
    from pipeline.adapters.files import atomic_write_text, write_json

    write_json(out / f"{stem}.json", doc)
    atomic_write_text(out / f"{stem}.md", text)
    return out / f"{stem}.md"


def stamp() -> str:
    return time.strftime("%Y-%m-%d %H:%M %Z")
