"""The errors a user can fix: the CLI and the stages print their message (which names the fix) and exit 2."""

from __future__ import annotations


class PipelineError(Exception):
    """An error in the user's input or environment: the CLI prints its message (which names the fix)."""


class ConfigError(PipelineError, ValueError):
    """A value in params.yaml is missing, unknown, of the wrong type or out of range."""


class DataError(PipelineError, RuntimeError):
    """Raw or prepared data is missing, corrupt or not what the pipeline expects. Never retried."""


class RegistryError(PipelineError):
    """The Model Registry is not in the state an operation needs (no champion, no previous, bad hash)."""


class InputError(PipelineError, ValueError):
    """Model input that is not a batch of 28x28 grayscale images in a supported encoding."""
