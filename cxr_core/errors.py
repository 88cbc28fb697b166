"""The project's own error type: bad input a user can fix (as opposed to a bug)."""


class CxrError(Exception):
    """Bad input: the message names the problem and the fix. Entry points print it as one line, exit 2."""

    def __str__(self) -> str:
        # One line whatever the message quotes (a YAML key with a newline, a library's multi-line complaint).
        return " ".join(part.strip() for part in super().__str__().splitlines() if part.strip())


def choices(table) -> str:
    """The names of a closed set of options, as a message lists them: ``fifo, asha, median``."""
    return ", ".join(str(name) for name in table)


def lookup(table, name, key: str):
    """``table[name]``, the one lookup that both validation and dispatch use for a closed set of options (a dict of
    name -> what the name does), so that a name the table lacks is refused and never falls back to another.

    Raises:
        CxrError: ``name`` is not in the table; the message lists the valid names.
    """
    try:
        return table[name]
    except (KeyError, TypeError):  # TypeError: an unhashable value (a list where a name belongs)
        raise CxrError(f"`{key}` must be one of {choices(table)}, got {name!r}") from None
