"""URL and query parameters that name database rows: integers SQLite can hold, refused otherwise.

Flask's `int` converter takes any number of digits, and a value beyond 64 bits reached SQLite as
"Python int too large" (a 500, found by tests/test_fuzz_api.py).
"""

from flask import request
from werkzeug.exceptions import NotFound
from werkzeug.routing import IntegerConverter

from webapp.core.errors import AppError

ROW_ID_MAX = 2**63 - 1  # SQLite's INTEGER


class RowIdConverter(IntegerConverter):
    """`<row_id:name>`: digits naming a row; beyond ROW_ID_MAX there is no such row (404). Not the
    converter's own `max`: a value over it made werkzeug answer 405 for a path with two methods."""

    def to_python(self, value: str) -> int:
        number = super().to_python(value)
        if number > ROW_ID_MAX:
            raise NotFound(f"there is no row {value[:30]}...")
        return number


def row_id_arg(name: str, default: int = 0) -> int:
    """A query parameter holding a row id or sequence number: 400 unless 0..ROW_ID_MAX."""
    raw = request.args.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or int(raw) > ROW_ID_MAX:
        raise AppError(400, "bad_request", f"'{name}' must be a whole number from 0 to {ROW_ID_MAX}")
    return int(raw)


def init_app(app):
    app.url_map.converters["row_id"] = RowIdConverter
