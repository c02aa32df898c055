"""Params for quick runs of a project copy: the bench's temporary projects and the test suite's projects.

Light on purpose (no TensorFlow, no MLflow): ``tests/conftest.py`` imports it in every test process.
"""

from __future__ import annotations

import copy
from pathlib import Path

DEBIAN_DATA = Path("/usr/share/datasets/fashion-mnist")  # apt-get install dataset-fashion-mnist


def tiny_params(params: dict, variants: tuple[str, ...], *, epochs: int, limit: int, mirror: Path) -> dict:
    """``params`` (params.yaml as loaded) for a quick run: only ``variants``, ``epochs`` each, ``limit`` training images.

    The data comes from ``mirror`` alone, settings that name a dropped variant (``evaluate.tta``, a
    study of ``tune``) go with it, and the registry's floor is 0.5 (a few epochs on a subset reach about 75%). The test
    suite builds its projects' params with this function too.
    """
    params = copy.deepcopy(params)
    params["data"]["mirrors"] = [str(mirror)]
    params["train"] |= {"epochs": epochs, "limit": limit}
    params["variants"] = {name: params["variants"][name] | {"epochs": epochs} for name in variants}
    for v in params["variants"].values():
        v.pop("limit", None)
    tta = params.get("evaluate", {}).get("tta") or {}
    if tta:
        params["evaluate"]["tta"] = {name: mode for name, mode in tta.items() if name in variants}
    if "tune" in params:  # studies go with their variant
        params["tune"] = {name: study for name, study in params["tune"].items() if study.get("variant") in variants}
    params["registry"]["floor"] = 0.5
    return params
