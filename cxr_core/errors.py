"""The project's own error type: bad input a user can fix (as opposed to a bug)."""


class CxrError(Exception):
    """Bad input: the message names the problem and the fix. Entry points print it as one line, exit 2."""
