"""Stage ``download``: fetch the four official Fashion-MNIST files into ``data/raw/``.

Reads ``data.mirrors`` and ``data.timeout``; writes ``data/raw/*.gz``, each verified by
its official .gz or decompressed-content MD5 before it is renamed into place.
"""

from __future__ import annotations

import logging

from pipeline.adapters.mirrors import fetch_all
from pipeline.adapters.paths import Paths
from pipeline.adapters.process import run_entry
from pipeline.core.config import load_params

log = logging.getLogger(__name__)


def main() -> None:
    params = load_params()
    files = fetch_all(params.data.mirrors, Paths().raw, params.data.timeout)
    log.info("%d verified files in %s", len(files), Paths().raw)


if __name__ == "__main__":
    run_entry(main)
