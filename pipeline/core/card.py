"""Model cards in markdown: one per registered version, one for the registered model.

A version's card is written once, when ``register`` creates the version, from figures the
pipeline already has (``reports/metrics/<variant>.json``, ``reports/data.json``, ``dvc.lock``,
the variant's MLflow run). Its last section, "Gate decisions", only grows: each gate decision or
rollback that concerns the version appends one line (:func:`with_entry`), and the oldest lines
give way, counted, when the card would pass MLflow's 5,000 characters. The model's card is
rendered again from the registry's aliases whenever one of them moves.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

GATE_HEADING = "## Gate decisions"
CARD_LIMIT = 5000  # MLflow's SQL stores keep a version's description in a VARCHAR(5000): PostgreSQL refuses one longer
_EARLIER = re.compile(r"- (\d+) earlier entr(?:y|ies) not shown")

LIMITS = (
    "Trained on Fashion-MNIST: 28x28 grayscale product photos, centred, light items on a dark (zero) "
    "background. Photos of real clothes need the same preparation (crop to the item, grayscale, "
    "invert to a dark background, resize to 28x28): `fmnist predict` converts the size and colour "
    "and says when it had to, but it cannot remove a real background."
)

ALIASES = {
    "champion": "the model in service (`models:/{name}@champion`); moved only by the gate or a rollback",
    "challenger": "the version registered last, put through the gate against the champion",
    "previous": "the champion before the current one; `fmnist rollback` restores it",
}


@dataclass(frozen=True)
class Lineage:
    """Where a version came from, across git, DVC, MLflow and Prefect (empty strings where not applicable)."""

    git_commit: str = ""
    git_dirty: bool = False
    exp_name: str = ""
    exp_baseline_rev: str = ""
    run_id: str = ""
    parent_run_id: str = ""
    parent_run_name: str = ""
    prefect_flow_run_id: str = ""
    prepared_md5: str = ""
    accepted_batches: dict[str, int] = field(default_factory=dict)
    stage_hashes: dict[str, dict[str, str]] = field(default_factory=dict)  # dvc.lock: stage -> {out path: md5}


def _pct(x: float) -> str:
    return f"{x:.2%}"


def _settings(settings: dict) -> str:
    if not settings:
        return "the `train:` defaults"
    return ", ".join(f"`{k}` {v}" for k, v in settings.items())


def lineage_rows(lin: Lineage) -> list[str]:
    """The lineage record as markdown table rows (``| what | value |``)."""
    exp = f"`{lin.exp_name}` (baseline `{lin.exp_baseline_rev[:12]}`)" if lin.exp_name else "none (not a `dvc exp run`)"
    parent = f"`{lin.parent_run_id}` ({lin.parent_run_name})" if lin.parent_run_id else "none"
    batches = ", ".join(f"`{b}` ({n:,})" for b, n in lin.accepted_batches.items()) or "none"
    rows = [
        f"| git commit | `{lin.git_commit}`{' plus uncommitted changes' if lin.git_dirty else ''} |",
        f"| DVC experiment | {exp} |",
        f"| MLflow run | `{lin.run_id}` |",
        f"| MLflow parent run | {parent} |",
        f"| Prefect flow run | {f'`{lin.prefect_flow_run_id}`' if lin.prefect_flow_run_id else 'none'} |",
        f"| `data/prepared` (DVC) | `{lin.prepared_md5 or 'unversioned'}` |",
        f"| accepted batches in training | {batches} |",
    ]
    for stage, outs in lin.stage_hashes.items():
        rows += [f"| `dvc.lock` {stage}: `{path}` | `{md5}` |" for path, md5 in outs.items()]
    return rows


def gate_entry(record: dict, by: str) -> str:
    """One line of a version's "Gate decisions": when, by what, the decision, the champion compared, the reason."""
    champ = (record.get("scores") or {}).get("champion")
    against = (
        f"against champion version {record['champion_before']} (test accuracy {champ['test_accuracy']:.4f})"
        if champ
        else "with no other champion to compare"
    )
    return f"- {record['decided_at']}, {by}: **{record['decision']}** {against}: {record['reason']}."


def version_card(name: str, version: str, metrics: dict, data: dict, lineage: Lineage, tta: str = "none") -> str:
    """The card of one version: what it is, its data and lineage, how good it is, where it fails, how to use it."""
    counts = data["counts"]
    accepted = sum(lineage.accepted_batches.values())
    lines = [
        f"# {name} version {version}: `{metrics['variant']}`",
        "",
        f"**Test accuracy {_pct(metrics['test_accuracy'])}**, macro F1 {metrics['macro_f1']:.4f}, "
        f"ECE {metrics['ece']:.4f} on the {counts['test']['total']:,} test images "
        f"(test-time augmentation: {tta}); validation accuracy {_pct(metrics['val_accuracy'])} "
        f"on {counts['val']['total']:,} images, the figure it was selected by.",
        "",
        "| | |",
        "|---|---|",
        f"| variant | `{metrics['variant']}` |",
        f"| architecture | `{metrics['architecture']}`, {metrics['params']:,} trainable parameters |",
        f"| settings that differ from `train:` | {_settings(metrics.get('settings', {}))} |",
        f"| training | {metrics['epochs_trained']} epochs (best: {metrics['best_epoch']}) in {metrics['train_seconds']:.0f} s "
        f"on {metrics.get('train_images', counts['train']['total']):,} images |",
        "",
        "## Data",
        "",
        f"Splits: train {counts['train']['total']:,} (of which {accepted:,} accepted new images), "
        f"validation {counts['val']['total']:,}, test {counts['test']['total']:,}. "
        f"`data/prepared` has DVC hash `{lineage.prepared_md5 or 'unversioned'}`.",
        "",
        "## Lineage",
        "",
        "| | |",
        "|---|---|",
        *lineage_rows(lineage),
        "",
        "## Per class (test)",
        "",
        "| class | precision | recall |",
        "|---|---:|---:|",
        *(f"| {c} | {metrics['per_class_precision'][c]:.4f} | {r:.4f} |" for c, r in metrics["per_class_recall"].items()),
        "",
        "## Worst confusions (test)",
        "",
        *(f"- {w['true']} → {w['predicted']}: {w['count']:,} of {w['of']:,}" for w in metrics.get("worst_confusions", [])),
        "",
        "## Use",
        "",
        "```python",
        "import mlflow",
        f'model = mlflow.pyfunc.load_model("models:/{name}/{version}")',
        "model.predict(images)  # uint8 (N, 28, 28): class_index, class_name, probabilities",
        "```",
        "",
        f"Serve it with `fmnist serve --version {version}` (HTTP on 127.0.0.1:5001), classify files with "
        f"`fmnist predict --version {version} shirt.png`, and print this card with `fmnist card --version {version}`.",
        "",
        "## Known limits",
        "",
        LIMITS,
        "",
        GATE_HEADING,
        "",
    ]
    return "\n".join(lines)


def with_entry(card: str, entry: str, limit: int = CARD_LIMIT) -> str:
    """``card`` with one more line at the end of its "Gate decisions" (the heading added if missing).

    The card stays within ``limit`` characters: the oldest lines give way to the newest, and one line in their
    place counts them. Each gate decision is also in the ``reports/promotion.json`` it wrote (and on its pipeline
    run, when it had one), each alias move in the model's ``alias_history.*`` tags (``fmnist history``).
    """
    body = card.rstrip("\n")
    head, found, log = body.partition(GATE_HEADING)
    entries = [line for line in log.splitlines() if line.strip()] if found else []
    dropped = 0
    if entries and (earlier := _EARLIER.match(entries[0])):
        dropped, entries = int(earlier[1]), entries[1:]
    entries.append(entry)

    def render() -> str:
        note = (
            []
            if not dropped
            else [
                f"- {dropped} earlier entr{'y' if dropped == 1 else 'ies'} not shown, to keep this card within MLflow's "
                f"{limit:,} characters: each gate decision is also in the `reports/promotion.json` it wrote, each alias "
                "move in `fmnist history`."
            ]
        )
        top = f"{head.rstrip(chr(10))}\n\n{GATE_HEADING}" if head.strip() else GATE_HEADING
        return "\n".join([top, "", *note, *entries]) + "\n"

    text = render()
    while len(text) > limit and len(entries) > 1:
        entries.pop(0)
        dropped += 1
        text = render()
    return text


HISTORY_SHOWN = 10  # the latest alias moves in the model's card; `fmnist history` prints them all


def history_line(move: dict) -> str:
    """One alias move for the terminal: when, which alias, from and to which version, by whom, why."""
    return f"{move['at']}  {move['alias']:<10}  {move['from'] or '-':>4} -> {move['to']:<4}  {move['reason']}  ({move['by']})"


def model_card(
    name: str, aliases: dict[str, str | None], champion: dict | None, event: str, history: list[dict] | None = None
) -> str:
    """The registered model's card: what it is, its aliases, the current champion's headline figures, the latest alias moves.

    ``champion`` holds the champion version's tags (``variant``, ``val_accuracy``, ``test_accuracy``,
    ``macro_f1``); ``event`` says what moved an alias last; ``history`` is every alias move, oldest first.
    """
    lines = [
        f"# {name}",
        "",
        "A Fashion-MNIST classifier: a CNN that takes 28x28 grayscale images (uint8 0-255 or float 0-1, "
        "shaped (N, 28, 28) or (N, 28, 28, 1)) and returns, per image, `class_index`, `class_name` and the "
        "ten `probabilities`. Every version is registered by this pipeline's `register` stage, and its "
        "description is its model card: data, lineage, per-class figures, worst confusions, gate decisions.",
        "",
        "## Aliases",
        "",
        "| alias | version | meaning |",
        "|---|---:|---|",
        *(f"| `{a}` | {aliases.get(a) or '-'} | {meaning.format(name=name)} |" for a, meaning in ALIASES.items()),
        "",
        "## Champion",
        "",
    ]
    if champion is not None and aliases.get("champion"):
        labels = (("test_accuracy", "test accuracy"), ("val_accuracy", "validation accuracy"), ("macro_f1", "macro F1"))
        figures = ", ".join(f"{label} {float(champion[k]):.4f}" for k, label in labels if champion.get(k))
        lines.append(
            f"Version {aliases['champion']} (`{champion.get('variant', '?')}`): {figures or 'no figures tagged'}. "
            f"Load it with `models:/{name}@champion`."
        )
    else:
        lines.append("No champion yet: the first version to clear `registry.floor` becomes one.")
    lines += ["", f"Last change: {event}.", ""]
    if history:
        lines += [
            "## Alias history",
            "",
            f"The latest {min(len(history), HISTORY_SHOWN)} of {len(history)} moves, newest first. Every move is also a "
            "tag `alias_history.<time>` of this model, never rewritten; `fmnist history` prints them all.",
            "",
            "| when (UTC) | alias | from | to | why | by |",
            "|---|---|---:|---:|---|---|",
            *(
                f"| {m['at']} | `{m['alias']}` | {m['from'] or '-'} | {m['to']} | {m['reason']} | {m['by']} |"
                for m in reversed(history[-HISTORY_SHOWN:])
            ),
            "",
        ]
    return "\n".join(lines)
