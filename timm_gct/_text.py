""" Plain text for the command line and error messages. """
from typing import Iterable, Sequence

__all__ = ['few', 'text_table']


def text_table(head: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """Columns two spaces apart, each as wide as its widest cell; the first ``left`` are left-aligned (names), the
    rest right-aligned (numbers)."""
    table = [list(head)] + [list(r) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    return '\n'.join(
        '  '.join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
        for row in table)


def few(keys: Iterable[str], limit: int = 5) -> str:
    """Up to ``limit`` keys for an error message, and how many there are."""
    keys = list(keys)
    if not keys:
        return 'none'
    more = f' and {len(keys) - limit} more' if len(keys) > limit else ''
    return ', '.join(keys[:limit]) + more + f' ({len(keys)} in all)'
