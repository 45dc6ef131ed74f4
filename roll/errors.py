"""Errors the user can fix; `roll` prints them as one line and exits 2 (see roll/cli.py)."""


class RollError(Exception):
    """Base of roll's user-facing errors; the message is one line that says what to do."""


class ConfigError(RollError):
    """A config that cannot be used: missing file, invalid YAML, unknown key, bad value."""


class PreflightError(RollError):
    """Something the run needs is missing (Docker engine, sandbox image)."""
