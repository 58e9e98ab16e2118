"""Errors that the command line turns into one line and an exit code, never a traceback."""

from __future__ import annotations


class OpendlcError(Exception):
    """A failure the user can act on: printed as one line, exit status 1."""

    exit_code = 1


class UsageError(OpendlcError):
    """Bad options or bad input named by the user: printed as one line, exit status 2."""

    exit_code = 2


class NotAvailableError(OpendlcError):
    """A capability that no loaded plugin provides."""

    exit_code = 1
