"""Adapters: each module (or package) a client of one outside system; the table in docs/architecture.md lists them."""
