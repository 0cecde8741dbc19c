"""The one exception type for a user's mistake.

``UserError`` means the input is wrong, not the code: a bad file, a bad field, a bad setting. Its message
is one line naming the file, the line or field and what was expected. The ``popos`` command prints it
without a traceback and exits with status 2; every other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A user's input is invalid; the message names the file, the line or field and what was expected."""
