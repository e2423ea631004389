"""The errors a user can act on, below the command line.

Owns: `SerlError` and its families. Library code raises these (or `config.ConfigError`, a `ValueError` for a
config that does not fit the schema) with one line that names the field or file, the value seen and what is
expected; only `cli.py` (and the process entry points it calls) turns them into a message and an exit code, and
shows a traceback only with `--debug`. Nothing below the CLI raises `SystemExit`.
"""

from __future__ import annotations


class SerlError(Exception):
    """An error with a message meant for the user; `exit_code` is what the `serl` command exits with."""

    exit_code = 1


class RunDirError(SerlError):
    """A run folder that is missing, already holds a run, or lacks what the command needs (config, checkpoint)."""

    exit_code = 2


class EvalError(RunDirError):
    """Bad input to an evaluation: a run, checkpoint or option that does not fit (`serl eval` exits 2)."""


class TransportError(SerlError):
    """The link to the peer failed in a way the process cannot recover from: a port that cannot be bound, a
    learner that refused this actor, a spool that reached its cap."""


class SpoolFullError(TransportError):
    """The actor's spool of unacknowledged transitions reached `transport.spool_max_bytes`."""


class ProcessGone(SerlError):
    """The parent process (`serl train`) is gone: the child stops instead of running unattended."""
