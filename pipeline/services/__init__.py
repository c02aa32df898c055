"""Use cases that stages, commands and flows share, built from the core and the adapters."""
