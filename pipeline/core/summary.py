"""The variant comparison: which variant is best (by validation accuracy) and the table that shows it."""

from __future__ import annotations


def best_variant(metrics: list[dict]) -> dict:
    """The variant with the highest validation accuracy (ties: fewer parameters)."""
    return max(metrics, key=lambda m: (m["val_accuracy"], -m["params"]))


def render(metrics: list[dict], machine: str, cores: int) -> str:
    """The comparison table in markdown, best by validation accuracy first; ``machine`` and ``cores`` say where it trained."""
    rows = sorted(metrics, key=lambda m: (-m["val_accuracy"], m["params"]))  # the same order as best_variant
    best = best_variant(metrics)
    lines = [
        "# Variant comparison",
        "",
        "Selection uses the validation split (5,000 images held out of training); the test set",
        "(10,000 images) is read once per model, for these final figures. Validation and test figures",
        "use the test-time augmentation (TTA) in the table, which the registered model serves too.",
        "",
        "| variant | params | epochs | train time | TTA | val accuracy | test accuracy | macro F1 | ECE | hardest class (recall) |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---|",
    ]
    for m in rows:
        hardest, recall = min(m["per_class_recall"].items(), key=lambda kv: kv[1])
        lines.append(
            f"| {'**' + m['variant'] + '**' if m is best else m['variant']} | {m['params']:,} | {m['epochs_trained']} "
            f"| {m['train_seconds']:.0f} s | {m.get('tta', 'none')} | {m['val_accuracy']:.2%} | {m['test_accuracy']:.2%} | {m['macro_f1']:.4f} "
            f"| {m['ece']:.4f} | {hardest} ({recall:.1%}) |"
        )
    lines += ["", f"Best by validation accuracy: **{best['variant']}** ({best['test_accuracy']:.2%} test accuracy).", ""]
    total = sum(m["train_seconds"] for m in metrics)
    lines.append(f"Training time, all variants: {total / 60:.1f} min on {machine} ({cores} cores).")
    return "\n".join(lines) + "\n"
