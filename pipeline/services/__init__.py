"""Use cases that stages, commands and flows share, built from the core and the adapters.

``promotion``: the champion/challenger gate and rollback, under the registry lock.
``drift_check``: new data's drift against the training split and the champion's predictions.
"""
