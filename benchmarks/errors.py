"""User-facing errors.

Every error a user can cause with bad input (a config, a dataset folder, a manifest, a
checkpoint, a record, a CLI argument) is a `DynbenchError`: the CLI prints its message alone,
without a traceback, and exits with status 2.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class DynbenchError(Exception):
    """An error caused by input the user can fix; the message says what and how."""


class UnknownNameError(DynbenchError, KeyError):
    """A model, dataset, suite or split name that does not exist."""

    def __init__(self, kind: str, name: str, known: Iterable[str]):
        known = sorted(known)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        shown = ", ".join(known[:20]) + (", ..." if len(known) > 20 else "")
        super().__init__(f"unknown {kind} '{name}'.{hint} Known {kind}s: {shown}")
        self.kind, self.name, self.suggestions = kind, name, close

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class DataNotFoundError(DynbenchError, FileNotFoundError):
    """Dataset files are missing; the message says where we looked and how to get them."""


class ManifestMismatchError(DynbenchError):
    """A split manifest or a source file does not match its recorded sha256."""


class ConfigError(DynbenchError, ValueError):
    """A malformed experiment config: names the file, the key and what was expected."""


class OutputError(DynbenchError, OSError):
    """An output folder that cannot be created or written."""


class CheckpointError(DynbenchError):
    """A checkpoint or weights file that is missing, unsafe or inconsistent."""


class TrainingDiverged(DynbenchError, FloatingPointError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""
