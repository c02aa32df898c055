"""The ``fmnist`` commands that are not DVC stages: each takes the parsed arguments and calls the services, adapters or core.

Each module's functions are what ``pipeline/cli.py`` dispatches to (``"module:function"``); the
table in docs/architecture.md lists them.
"""
