"""What the Prefect flows show as artifacts: markdown and table rows rendered from the stages' reports.

Takes the contents of ``reports/summary.md``, ``reports/promotion.json`` and
``reports/confusion/<variant>.csv`` (the flows read them) and returns text and rows.
"""

from __future__ import annotations

import csv
import io

from pipeline.core.drift import DriftReport


def promotion_markdown(record: dict | None, card_url: str | None = None) -> str:
    """The gate's decision; ``card_url`` links the challenger's model card in the MLflow UI."""
    if record is None:
        return "## Promotion decision\n\nNo gate has run yet (no `reports/promotion.json`).\n"
    scores = record.get("scores") or {}
    champ = (scores.get("champion") or {}).get("test_accuracy")
    chal = (scores.get("challenger") or {}).get("test_accuracy")
    lines = [
        "## Promotion decision",
        "",
        f"**{record['decision']}**: {record.get('variant', '?')} as version {record['challenger_version']} "
        f"of `{record['model_name']}`. {record['reason']}.",
        "",
        "| | version | test accuracy |",
        "|---|---:|---:|",
        f"| challenger | {record['challenger_version']} | {chal if chal is None else f'{chal:.4f}'} |",
        f"| champion before | {record['champion_before']} | {champ if champ is None else f'{champ:.4f}'} |",
        f"| champion after | {record['champion_after']} | |",
        "",
        f"Decided at {record['decided_at']} on the test set with SHA-256 `{record['test_sha256'][:16]}...`.",
    ]
    if card_url:
        version = record["challenger_version"]
        lines += [
            "",
            f"Model card of version {version}: [{record['model_name']} version {version}]({card_url}) "
            f"(or `fmnist card --version {version}`).",
        ]
    return "\n".join(lines) + "\n"


def training_markdown(summary: str | None, record: dict | None, card_url: str | None = None) -> str:
    """The variant comparison (``reports/summary.md``) followed by the promotion decision."""
    text = summary if summary is not None else "# Variant comparison\n\nNo summary yet.\n"
    return text + "\n" + promotion_markdown(record, card_url)


def confusion_table(confusion_csv: str) -> list[dict]:
    """A confusion matrix CSV (``reports/confusion/<variant>.csv``) as rows: true class, then counts per predicted class."""
    rows = list(csv.reader(io.StringIO(confusion_csv)))
    header = rows[0]
    return [{header[0]: row[0]} | {h: int(v) for h, v in zip(header[1:], row[1:])} for row in rows[1:]]


def drift_markdown(report: DriftReport | None, class_names: tuple[str, ...]) -> str:
    if report is None:
        return "## Drift\n\nNo new images, so no drift to measure.\n"
    shift = "n/a (no champion yet)" if report.class_shift is None else f"{report.class_shift:.4f}"
    class_psi = "n/a" if report.class_psi is None else f"{report.class_psi:.4f}"
    lines = [
        "## Drift",
        "",
        f"{report.n_new} new images against the training split. "
        + ("**Over threshold:** " + "; ".join(report.reasons) if report.drifted else "Within thresholds."),
        "",
        "| figure | value | threshold |",
        "|---|---:|---:|",
        f"| pixel-intensity PSI | {report.pixel_psi:.4f} | {report.psi_threshold} |",
        f"| champion's predicted-class shift (TVD) | {shift} | {report.class_shift_threshold} |",
        f"| champion's predicted-class PSI | {class_psi} | |",
    ]
    if report.confidence_drop is not None:
        lines.append(
            f"| champion's mean top probability, reference -> new | {report.confidence_ref:.4f} -> "
            f"{report.confidence_new:.4f} | a drop of {report.confidence_drop_threshold} |"
        )
    if report.classes_ref is not None:
        lines += ["", "| class | predicted share, training | predicted share, new |", "|---|---:|---:|"]
        lines += [f"| {c} | {r:.3f} | {n:.3f} |" for c, r, n in zip(class_names, report.classes_ref, report.classes_new)]
    return "\n".join(lines) + "\n"


def intake_markdown(intake: dict) -> str:
    lines = ["## Intake", ""]
    if intake["batch"]:
        per_class = ", ".join(f"{c} {n}" for c, n in intake["per_class"].items())
        lines.append(
            f"Accepted {intake['accepted_images']} images from {intake['accepted_files']} files into `{intake['batch']}` ({per_class})."
        )
    else:
        lines.append("No new images accepted.")
    if intake["rejected"]:
        lines += ["", f"Quarantined {len(intake['rejected'])} files in `data/quarantine/{intake['stamp']}/`:", ""]
        lines += ["| file | reason |", "|---|---|"] + [f"| `{f}` | {r} |" for f, r in intake["rejected"].items()]
    return "\n".join(lines) + "\n"


def retraining_markdown(
    intake: dict,
    drift: DriftReport | None,
    reasons: tuple[str, ...],
    versions: tuple[dict, dict],
    record: dict | None,
    class_names: tuple[str, ...],
    card_url: str | None = None,
) -> str:
    """The whole retraining run: intake, drift, why it retrained, the data versions, the gate's decision."""
    before, after = versions
    lines = [
        "# Retraining",
        "",
        "Retrained because: " + "; ".join(reasons) + ".",
        "",
        intake_markdown(intake),
        drift_markdown(drift, class_names),
        "## Data version (`dvc.lock`)",
        "",
        "| | before | after |",
        "|---|---|---|",
        *(f"| `{k}` | `{before.get(k) or '-'}` | `{after.get(k) or '-'}` |" for k in after),
        "",
        "Record this version with `git add data/accepted dvc.lock && git commit`.",
        "",
    ]
    return "\n".join(lines) + "\n" + promotion_markdown(record, card_url)


def nothing_new_markdown(intake: dict, reasons: tuple[str, ...]) -> str:
    return "# Retraining: nothing to do\n\n" + "; ".join(reasons) + ". No training ran.\n\n" + intake_markdown(intake)


def monitoring_markdown(window: dict, report: DriftReport | None, class_names: tuple[str, ...]) -> str:
    """``fmnist monitor``'s artifact: the window, its verdict, its drift figures and the images exported to label."""
    lines = ["# Monitoring: served traffic against the champion's training reference", "", window["message"] + ".", ""]
    if window.get("mlflow_run_id"):
        lines += [f"MLflow run `{window['mlflow_run_id']}` in the monitoring experiment.", ""]
    return "\n".join(lines) + (drift_markdown(report, class_names) if report is not None else "")
