"""The one family of errors a user can fix: a setting, a file, a name, a cluster that refuses.

The CLI prints a `UserError` as one line (`clipray: error: ...`) and exits 2; any other exception
is a bug in clipray or a library and keeps its traceback. The subclasses also derive from the
builtin a caller would expect (`FileNotFoundError`, `KeyError`, `ValueError`), so code that
catches those keeps working.
"""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix; the message names the key, file or cause."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or directory the user named does not exist."""


class UnknownNameError(UserError, KeyError):
    """A name (registry entry, schedule, column) that is not known; the message lists the known ones."""

    def __str__(self) -> str:
        # str() of a KeyError is the repr of its argument; the message reads better unquoted.
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class InvalidInputError(UserError, ValueError):
    """A value or input file that cannot be used as given."""
