"""Errors a user can fix (exit code 2) as opposed to internal failures (exit code 1); one-line warnings."""

import sys


class UserError(Exception):
    """A problem the user can fix: bad recipe, argument, path or file.

    The message is one line that names the problem and the fix; the CLI prints
    it without a traceback and exits with code 2.
    """


def warn(message: str) -> None:
    """One line on stderr, ``dynsearch: warning: ...``: something was found and handled (never silently)."""
    print(f"dynsearch: warning: {message}", file=sys.stderr, flush=True)
