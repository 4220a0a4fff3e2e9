"""Errors a user can act on: what was wrong, where (the config key), and what is allowed."""

from __future__ import annotations

from typing import Any


class SSLZooError(Exception):
    """Base class of the errors the CLI prints as one line and turns into exit code 2."""


class ConfigError(SSLZooError):
    """A configuration value that cannot work.

    ``key`` is the dotted config key (``optimizer.lr``), ``value`` what the user gave and ``allowed``
    a short phrase of what would work (``a number > 0``, ``one of: sgd, lars``).
    """

    def __init__(self, key: str, value: Any, allowed: str, hint: str | None = None):
        self.key, self.value, self.allowed, self.hint = key, value, allowed, hint
        msg = f"{key}={value!r} is not allowed: expected {allowed}"
        if hint:
            msg += f" ({hint})"
        super().__init__(msg)


class DataError(SSLZooError):
    """A data set that cannot be read (missing files, empty folder, no labels where needed)."""


class CheckpointError(SSLZooError):
    """A checkpoint that cannot be used (missing, corrupt, from another method)."""


def check(condition: bool, key: str, value: Any, allowed: str, hint: str | None = None) -> None:
    """Raise :class:`ConfigError` unless ``condition`` holds; the one-line guard used by every schema."""
    if not condition:
        raise ConfigError(key, value, allowed, hint)
