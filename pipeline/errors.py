"""The one error type a user can act on: bad input, or a machine or cluster that cannot run what was asked.

Command lines print a ``UserError`` as one line, ``error: <message>``, and exit with status 2, without a traceback
(``--debug`` shows it); the workflow engine never retries a step that raised one (running it again cannot help).
Everything else is a bug or a transient failure and keeps its traceback.
"""

from __future__ import annotations

EXIT_USER_ERROR = 2  # argparse's exit status for a bad command line; the same for every user error


class UserError(Exception):
    """A problem the user fixes (a path, a flag, a config value, the cluster's size); the message says how."""
