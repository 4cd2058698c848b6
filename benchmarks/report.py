"""What the benchmarks print with: percentiles, aligned tables, numbers, ratios and notes.

Imported by the scripts beside it as ``report`` (a script's folder is on ``sys.path``).
"""

from __future__ import annotations

import math
import textwrap


def percentile(values: list[float], pct: float, empty: float = math.nan) -> float:
    """Nearest-rank percentile: the smallest value with at least pct% of values at or below it
    (``empty`` when there are no values)."""
    if not values:
        return empty
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100.0 * len(ordered)) - 1)]


def table(headers: list[str], rows: list[list[str]], right: set[int] | None = None) -> str:
    """Columns aligned under a rule: those in ``right`` to the right, the others to the left
    (by default the first to the left, the others to the right)."""
    columns = range(len(headers))
    if right is None:
        right = set(columns[1:])
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in columns]

    def line(cells: list[str]) -> str:
        aligned = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(cells)
        ]
        return "  ".join(aligned).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def fmt(value: float, digits: int = 3) -> str:
    """A number with ``digits`` significant digits, without an exponent."""
    if math.isnan(value):
        return "-"
    if value == 0:
        return "0"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    return f"{value:,.{decimals}f}"


def ratio(value: float, base: float) -> str:
    """``value / base`` as ``1.23x``; ``-`` without a base."""
    return f"{value / base:,.2f}x" if base > 0 else "-"


def note(text: str) -> str:
    """A note under a table: indented, wrapped at 100 columns unless it is preformatted."""
    if "\n" in text:
        return textwrap.indent(text, "   ")
    return textwrap.fill(
        text, width=100, initial_indent="   ", subsequent_indent="     ", break_on_hyphens=False
    )
