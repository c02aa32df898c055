"""The ``fmnist`` commands that are not DVC stages: run, promote and rollback, serve and ui, predict,
intake and simulate-new-data. Each module's ``cli(args)`` is what ``pipeline/cli.py`` dispatches to.
"""
