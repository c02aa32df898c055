"""Stage ``download``: fetch the four official Fashion-MNIST files into ``data/raw/``.

Reads ``data.mirrors`` and ``data.timeout``; writes ``data/raw/*.gz``, each verified by
its official .gz or decompressed-content MD5 before it is renamed into place.
"""

from __future__ import annotations

import logging

from pipeline.config import Paths, load_params
from pipeline.data import fetch_all

log = logging.getLogger(__name__)


def main() -> None:
    params = load_params()
    paths = Paths()
    for path in fetch_all(params.data.mirrors, paths.raw, params.data.timeout):
        log.info("ok %s", path)


if __name__ == "__main__":
    from pipeline.cli import run_stage

    run_stage(main)
