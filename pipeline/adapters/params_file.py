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

    yaml = YAML()  # round trip: comments, quotes and flow mappings stay as written
    yaml.width = 120
    yaml.preserve_quotes = True
    yaml.indent(mapping=2, sequence=4, offset=2)  # the file's own layout: list items indented under their key
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
    _append(variants, name, new)
    variants.yaml_set_comment_before_after_key(name, before=f"\n{comment}", indent=2)  # a blank line, then the comment
    if tta:
        _append(doc.setdefault("evaluate", CommentedMap()).setdefault("tta", CommentedMap()), name, tta)
    out = io.StringIO()
    yaml.dump(doc, out)
    with atomic_path(path) as tmp:
        tmp.write_text(out.getvalue())
        load_params(tmp)  # refused here: the old file stays


def _append(mapping, key: str, value: Any) -> None:
    """Put ``key`` last in ``mapping``, and the blank lines that ended the mapping's old last entry after it.

    ruamel.yaml keeps a blank line as part of the comment of the scalar before it, the deepest last key of the
    mapping's last entry, so an entry appended as is would land after the blank line and before the next section."""
    from ruamel.yaml.error import CommentMark
    from ruamel.yaml.tokens import CommentToken

    old = _last_scalar(mapping)
    mapping[key] = value
    if old is None:
        return
    owner, last = old
    token = owner.ca.items.get(last, [None] * 4)[2]
    if token is None or not token.value.endswith("\n\n"):
        return
    kept = token.value.rstrip("\n") + "\n"
    token.value, blanks = kept, token.value[len(kept) :]
    owner, last = _last_scalar(mapping)
    owner.ca.items.setdefault(last, [None] * 4)[2] = CommentToken("\n" + blanks, CommentMark(0))


def _last_scalar(mapping) -> tuple[Any, Any] | None:
    """The mapping and key that hold the last scalar in ``mapping``'s text (descending into block mappings)."""
    if not mapping:
        return None
    last = list(mapping)[-1]
    value = mapping[last]
    if isinstance(value, dict) and value and not value.fa.flow_style():
        return _last_scalar(value)
    return mapping, last
