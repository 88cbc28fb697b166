"""The project's own error type: bad input a user can fix (as opposed to a bug)."""


class CxrError(Exception):
    """Bad input: the message names the problem and the fix. Entry points print it as one line, exit 2."""

    def __str__(self) -> str:
        # One line whatever the message quotes (a YAML key with a newline, a library's multi-line complaint).
        return " ".join(part.strip() for part in super().__str__().splitlines() if part.strip())
