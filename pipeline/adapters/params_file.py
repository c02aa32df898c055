"""Writing ``params.yaml``: a new variant added in place, the file's comments, order and layout kept (ruamel.yaml).

The file is checked as every command checks it (:func:`pipeline.core.config.load_params`) before
it replaces the old one, so a bad addition leaves the old file as it was.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from pipeline.adapters.files import atomic_path
from pipeline.core.config import load_params
from pipeline.core.errors import ConfigError


def add_variant(path: Path, name: str, base: str, settings: dict[str, Any], comment: str, tta: str | None = None) -> None:
    """Add variant ``name``: variant ``base``'s keys with dotted ``settings`` over them; with ``tta``, its
    ``evaluate.tta`` entry. Raises ConfigError if ``name`` exists or the result is not a valid params file."""
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap

    yaml = YAML()  # round trip: comments and flow mappings stay as written
    yaml.width = 120
    doc = yaml.load(path.read_text())
    variants = doc["variants"]
    if name in variants:
        raise ConfigError(f"variants.{name}: already in {path}; pass another name to --apply, or remove it first")
    new = CommentedMap((k, v) for k, v in variants[base].items() if k != "augment")
    augment = dict(variants[base].get("augment") or {})
    for key, value in settings.items():
        if key.startswith("augment."):
            augment[key.removeprefix("augment.")] = value
        else:
            new[key] = value
    if augment:
        flow = CommentedMap(augment)
        flow.fa.set_flow_style()
        new["augment"] = flow
    variants[name] = new
    variants.yaml_set_comment_before_after_key(name, before=comment, indent=2)
    if tta:
        doc.setdefault("evaluate", CommentedMap()).setdefault("tta", CommentedMap())[name] = tta
    out = io.StringIO()
    yaml.dump(doc, out)
    with atomic_path(path) as tmp:
        tmp.write_text(out.getvalue())
        load_params(tmp)  # refused here: the old file stays
