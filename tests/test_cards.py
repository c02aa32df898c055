"""Model cards (``pipeline/core/card.py``) from the figures the pipeline has, and the pieces they are made of.

The cards of a real tiny run, in a real registry, are checked in ``test_pipeline_e2e.py``.
"""

from __future__ import annotations

import numpy as np
import yaml
from conftest import ROOT

from pipeline.core import card
from pipeline.core.config import flatten, overrides, parse_params
from pipeline.core.metrics import worst_confusions

NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def test_flatten_joins_nested_keys_with_dots():
    assert flatten({"epochs": 2, "augment": {"shift": 2, "flip": False}}) == {
        "epochs": 2,
        "augment.shift": 2,
        "augment.flip": False,
    }


def test_overrides_are_the_settings_a_variant_changes_from_the_train_defaults():
    params = parse_params(yaml.safe_load((ROOT / "params.yaml").read_text()))
    assert overrides(params.variant("baseline"), params.train) == {}
    assert overrides(params.variant("dropout"), params.train) == {"dropout": 0.3}
    wide = overrides(params.variant("wide_aug"), params.train)
    assert wide["augment.shift"] == 1 and wide["augment.flip"] is True and wide["batch_size"] == 256
    assert "architecture" not in wide and "limit" not in wide  # the architecture has its own line; limit is unchanged


def test_worst_confusions_are_the_largest_off_diagonal_counts_with_the_true_class_total():
    cm = np.diag([900] * 10)
    cm[6, 0], cm[2, 4], cm[4, 6] = 83, 40, 12  # Shirt -> T-shirt/top, Pullover -> Coat, Coat -> Shirt
    got = worst_confusions(cm, NAMES, k=2)
    assert got == [
        {"true": "Shirt", "predicted": "T-shirt/top", "count": 83, "of": 983},
        {"true": "Pullover", "predicted": "Coat", "count": 40, "of": 940},
    ]
    assert len(worst_confusions(np.diag([5] * 10), NAMES)) == 0  # no mistakes, nothing listed


def _metrics() -> dict:
    recall = {c: 0.9 + i / 200 for i, c in enumerate(NAMES)}
    return {
        "variant": "bn_dropout",
        "architecture": "bn_cnn",
        "settings": {"epochs": 12, "augment.flip": True},
        "params": 412_234,
        "epochs_trained": 12,
        "best_epoch": 11,
        "train_seconds": 150.4,
        "train_images": 55_000,
        "val_accuracy": 0.937,
        "test_accuracy": 0.9331,
        "macro_f1": 0.93287,
        "ece": 0.0123,
        "tta": "none",
        "per_class_precision": {c: 0.8 + i / 100 for i, c in enumerate(NAMES)},
        "per_class_recall": recall,
        "worst_confusions": [{"true": "Shirt", "predicted": "T-shirt/top", "count": 83, "of": 1000}],
    }


DATA = {"counts": {s: {"total": n} for s, n in (("train", 55_120), ("val", 5000), ("test", 10_000))}}
LINEAGE = card.Lineage(
    git_commit="a" * 40,
    exp_name="frore-clip",
    exp_baseline_rev="b" * 40,
    run_id="c" * 32,
    parent_run_id="d" * 32,
    parent_run_name="frore-clip",
    prepared_md5="e" * 32 + ".dir",
    accepted_batches={"batch-20261201.npz": 120},
    stage_hashes={"train@bn_dropout": {"models/bn_dropout/model.keras": "f" * 32}},
)


def test_version_card_holds_every_figure_it_is_given():
    text = card.version_card("fashion-mnist-cnn", "7", _metrics(), DATA, LINEAGE)
    assert text.startswith("# fashion-mnist-cnn version 7: `bn_dropout`")
    assert "Test accuracy 93.31%" in text and "macro F1 0.9329" in text and "ECE 0.0123" in text
    assert "test-time augmentation: none" in text and "validation accuracy 93.70%" in text
    assert "`bn_cnn`, 412,234 trainable parameters" in text and "`epochs` 12, `augment.flip` True" in text
    assert "train 55,120 (of which 120 accepted new images)" in text and "`batch-20261201.npz` (120)" in text
    assert "| Shirt | 0.8600 | 0.9300 |" in text  # precision and recall of class 6
    assert "- Shirt → T-shirt/top: 83 of 1,000" in text
    assert "`frore-clip` (baseline `bbbbbbbbbbbb`)" in text and f"| MLflow run | `{'c' * 32}` |" in text
    assert f"| `dvc.lock` train@bn_dropout: `models/bn_dropout/model.keras` | `{'f' * 32}` |" in text
    assert 'mlflow.pyfunc.load_model("models:/fashion-mnist-cnn/7")' in text and "fmnist serve --version 7" in text
    assert "dark" in text  # the known limits
    assert text.rstrip().endswith(card.GATE_HEADING)  # decisions are appended below


def test_a_card_outside_an_experiment_says_so():
    text = card.version_card("m", "1", _metrics(), DATA, card.Lineage(run_id="r"))
    assert "| DVC experiment | none (not a `dvc exp run`) |" in text and "| Prefect flow run | none |" in text


def test_gate_entries_append_in_order_under_the_heading():
    record = {
        "decided_at": "2026-12-01T20:54:06Z",
        "decision": "rejected",
        "champion_before": "1",
        "reason": "gain +0.0000 is below the margin 0.0020",
        "scores": {"challenger": {"test_accuracy": 0.9368}, "champion": {"test_accuracy": 0.9368}},
    }
    first = card.gate_entry(record, "`register` stage on host")
    assert first == (
        "- 2026-12-01T20:54:06Z, `register` stage on host: **rejected** against champion version 1 "
        "(test accuracy 0.9368): gain +0.0000 is below the margin 0.0020."
    )
    text = card.with_entry(card.with_entry(card.version_card("m", "2", _metrics(), DATA, LINEAGE), first), "- later")
    assert text.endswith(f"{card.GATE_HEADING}\n\n{first}\n- later\n")
    assert card.with_entry("", "- x") == f"{card.GATE_HEADING}\n\n- x\n"  # a version registered before cards


def test_a_long_gate_log_keeps_the_card_within_mlflows_limit_the_newest_entries_and_a_count_of_the_rest():
    text = card.version_card("m", "2", _metrics(), DATA, LINEAGE)
    entries = [f"- 2026-12-01T20:{i // 60:02d}:{i % 60:02d}Z, a gate on host: **rejected**: round {i}." for i in range(200)]
    for entry in entries:
        text = card.with_entry(text, entry)
        assert len(text) <= card.CARD_LIMIT
    log = text.split(card.GATE_HEADING)[1].strip().splitlines()
    kept = len(log) - 1
    assert 10 < kept < 200 and log[1:] == entries[-kept:]  # the newest, in order
    assert log[0].startswith(f"- {200 - kept} earlier entries not shown") and "`fmnist history`" in log[0]
    assert text.startswith(card.version_card("m", "2", _metrics(), DATA, LINEAGE).rstrip("\n"))  # the card itself intact


def test_model_card_names_the_aliases_and_the_champions_figures():
    champion = {"variant": "wide_aug", "test_accuracy": "0.936800", "val_accuracy": "0.937600", "macro_f1": "0.936652"}
    text = card.model_card("fashion-mnist-cnn", {"champion": "3", "previous": "1"}, champion, "rollback to version 3")
    assert "| `champion` | 3 |" in text and "| `previous` | 1 |" in text and "| `challenger` | - |" in text
    assert "Version 3 (`wide_aug`): test accuracy 0.9368, validation accuracy 0.9376, macro F1 0.9367" in text
    assert "Last change: rollback to version 3." in text
    assert "No champion yet" in card.model_card("m", {}, None, "first registration")
    assert "Version 2 (`baseline`): no figures tagged." in card.model_card("m", {"champion": "2"}, {"variant": "baseline"}, "x")


def test_model_card_shows_the_latest_alias_moves_newest_first():
    moves = [
        {"alias": "champion", "from": str(v - 1) if v > 1 else None, "to": str(v), "at": f"2026-12-0{v}T00:00:00Z"}
        | {"by": f"host{v}", "reason": f"move {v}"}
        for v in range(1, 13)
    ]
    text = card.model_card("m", {"champion": "12"}, {"variant": "baseline"}, "x", moves)
    rows = [line for line in text.split("## Alias history", 1)[1].splitlines() if line.startswith("| 2026")]
    assert len(rows) == card.HISTORY_SHOWN and "The latest 10 of 12 moves" in text
    assert rows[0] == "| 2026-12-012T00:00:00Z | `champion` | 11 | 12 | move 12 | host12 |"
    assert rows[-1].startswith("| 2026-12-03T00:00:00Z | `champion` | 2 | 3 |")
    assert "## Alias history" not in card.model_card("m", {}, None, "x", [])
    assert card.history_line(moves[0]) == "2026-12-01T00:00:00Z  champion       - -> 1     move 1  (host1)"
