"""Number and time formatting for the pages, as Jinja filters: `{{ x | pct }}`, `{{ x | num }}`,
`{{ seconds | duration }}`, `{{ iso | when }}`. A value that is missing or not a finite number is
shown as "—" instead of failing the page."""

import math

MISSING = "—"


def finite(value):
    """`value` when it is a finite int or float (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return value


def pct(value, digits=1) -> str:
    value = finite(value)
    return MISSING if value is None else f"{value:.{digits}%}"


def num(value, digits=3) -> str:
    value = finite(value)
    if value is None:
        return MISSING
    return f"{value:,}" if isinstance(value, int) else f"{value:,.{digits}f}"


def duration(seconds) -> str:
    seconds = finite(seconds)
    if seconds is None:
        return MISSING
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def when(iso) -> str:
    """2026-01-31T12:00:00+00:00 -> 2026-01-31 12:00:00 UTC"""
    return iso.replace("T", " ").replace("+00:00", " UTC") if iso else "–"


def init_app(app):
    app.jinja_env.filters.update(pct=pct, num=num, duration=duration, when=when)
