"""What a study found, from its trials: the counts, the best trials, the epochs pruning saved, and its report.

A trial here is a plain mapping (``number``, ``state`` complete | pruned | failed | running | waiting,
``value``, ``params``, ``epochs``, ``seconds``), as :func:`pipeline.adapters.studies.trials` reads them.
"""

from __future__ import annotations

from typing import Any

SHOWN = 5  # the best trials in the report


def summarize(name: str, variant: str, trials: list[dict], max_epochs: int, importances: dict[str, float]) -> dict[str, Any]:
    """The study's figures: trials by state, the best ones (by objective, then fewer seconds), and pruning's savings."""
    counts = {s: sum(t["state"] == s for t in trials) for s in ("complete", "pruned", "failed")}
    complete = sorted((t for t in trials if t["state"] == "complete"), key=lambda t: (-t["value"], t["seconds"]))
    pruned = [t for t in trials if t["state"] == "pruned"]
    return {
        "study": name,
        "variant": variant,
        "counts": counts,
        "best_value": complete[0]["value"] if complete else None,
        "best": complete[:SHOWN],
        "max_epochs": max_epochs,
        "pruned_epochs_saved": sum(max_epochs - t["epochs"] for t in pruned),
        "fit_seconds": round(sum(t["seconds"] for t in trials), 1),
        "importances": importances,
    }


def _value(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def render(summary: dict, figures: dict[str, str], machine: str) -> str:
    """``reports/tune/<study>.md``: what ran, the best trials, the figures, and how far they may be trusted."""
    c, best = summary["counts"], summary["best"]
    keys = sorted({k for t in best for k in t["params"]})
    lines = [
        f"# Study `{summary['study']}` (from variant `{summary['variant']}`)",
        "",
        f"Measured on {machine}. {c['complete']} trials complete, {c['pruned']} pruned, {c['failed']} failed; "
        f"{summary['fit_seconds']:,.0f} s of fitting in all. Pruning stopped {c['pruned']} trial{'' if c['pruned'] == 1 else 's'} "
        f"early and saved {summary['pruned_epochs_saved']} of their epochs (each trial at most {summary['max_epochs']}).",
        "",
        "The objective is validation accuracy, computed as `evaluate` computes it (test-time augmentation "
        "included); no trial reads the test set. A best trial is an optimistic figure: confirm it on seeds the "
        "search did not use (`--confirm`, below) before believing it; `--apply` then makes it a variant that `dvc repro` trains.",
        "",
        "## Best trials",
        "",
    ]
    if best:
        lines += [
            "| trial | val accuracy | epochs | fit s | " + " | ".join(f"`{k}`" for k in keys) + " |",
            "|---:|---:|---:|---:|" + "---|" * len(keys),
            *(
                f"| {t['number']} | {t['value']:.4f} | {t['epochs']} | {t['seconds']:.0f} | "
                + " | ".join(_value(t["params"].get(k, "")) for k in keys)
                + " |"
                for t in best
            ),
        ]
    else:
        lines.append("No trial completed.")
    lines += ["", "## Parameter importances", ""]
    if summary["importances"]:
        lines += ["| setting | importance |", "|---|---:|"]
        lines += [f"| `{k}` | {v:.3f} |" for k, v in summary["importances"].items()]
    else:
        lines.append("Not computed: they need at least two complete trials that differ.")
    lines += _confirmation(summary.get("confirmation"), summary["study"])
    lines += ["", *(f"![{title}]({path})" for title, path in figures.items()), ""]
    return "\n".join(lines)


def _settings(settings: dict) -> str:
    return ", ".join(f"`{k}` {_value(v)}" for k, v in settings.items()) or "as in `params.yaml`"


def _confirmation(c: dict | None, study: str) -> list[str]:
    """The report's section on ``fmnist tune --confirm``: each candidate over seeds the search never used."""
    if not c:
        return ["", "## Confirmation", "", f"Not run for this best trial yet: `fmnist tune {study} --confirm`."]
    seeds = sorted({r["seed"] for r in c["runs"]})
    lines = [
        "",
        "## Confirmation on seeds the search never used",
        "",
        f"`fmnist tune {c['study']} --confirm {c['seeds']}` ({c['when']}, {c['machine']}): each candidate trained with seeds "
        f"{seeds[0]} to {seeds[-1]} on {c['train_images']:,} training images, scored with its test-time augmentation on the "
        "validation and the test split (which no trial read). The reference is the study's variant as `params.yaml` has it, "
        "with the study's `reference` settings over it.",
        "",
        "| candidate | settings | TTA | test mean | sd | min - max | val mean | fit s (mean) |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for label, k in c["candidates"].items():
        lines.append(
            f"| {label} | {_settings(k['settings'])} | {k['tta']} | {k['test_mean']:.2%} | {100 * k['test_sd']:.2f} | "
            f"{k['test_min']:.2%} - {k['test_max']:.2%} | {k['val_mean']:.2%} | {k['fit_seconds_mean']:.0f} |"
        )
    lines += ["", "| candidate | seed | test | val | epochs | fit s |", "|---|---:|---:|---:|---:|---:|"]
    lines += [
        f"| {r['settings']} | {r['seed']} | {r['test_accuracy']:.2%} | {r['val_accuracy']:.2%} | {r['epochs_trained']} | "
        f"{r['fit_seconds']:.0f} |"
        for r in c["runs"]
    ]
    return lines
