"""Server-side SVG charts for the dashboard: heat map, line chart, bar chart, reliability diagram.

Pure functions: data in, SVG markup out (a `Markup` string, safe to place in a template). Every
label is escaped; colours are presentation attributes, so the charts need no inline style and no
script and work under a self-only Content-Security-Policy. Each chart has a <title> and <desc>
referenced by aria-labelledby; the dashboard also shows the same numbers as tables.
"""

import math
from collections import namedtuple
from dataclasses import dataclass

from markupsafe import Markup, escape

PALETTE = ("#2456d6", "#d9480f", "#2b8a3e", "#862e9c")
INK = "#1d2330"
MUTED = "#5b6475"
GRID = "#dde1e8"
FONT = 'font-family="system-ui, sans-serif"'
Plot = namedtuple("Plot", "left top width height")  # the plotting area inside a chart, in pixels


@dataclass(frozen=True)
class Chart:
    """What names a chart: its element id, its title and its axes' titles (for a bar chart,
    `x_label` names the values; a heat map's default to predicted and true class)."""
    id: str
    title: str
    x_label: str = ""
    y_label: str = ""


def _f(value: float) -> str:
    """A coordinate, short."""
    return f"{value:.1f}".rstrip("0").rstrip(".")


def _finite(values):
    return [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]


def nice_ticks(low: float, high: float, count: int = 5) -> list:
    """Round tick values covering [low, high], about `count` intervals."""
    if not high > low:
        high = low + 1
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw * 0.999)
    start = math.floor(low / step + 1e-9) * step
    steps = math.ceil((high - start) / step - 1e-9)
    return [round(start + i * step, 10) for i in range(steps + 1)]


def _svg(chart: Chart, size: tuple, desc: str, body: list) -> Markup:
    cid, (width, height) = escape(chart.id), size
    return Markup(
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" id="{cid}" viewBox="0 0 {_f(width)} {_f(height)}" '
        f'role="img" aria-labelledby="{cid}-title {cid}-desc" {FONT}>'
        f'<title id="{cid}-title">{escape(chart.title)}</title><desc id="{cid}-desc">{escape(desc)}</desc>'
        + "".join(body) + "</svg>")


def _text(at, label, size=12, anchor="middle", fill=INK, extra="") -> str:
    """A label at `at` = (x, y)."""
    x, y = at
    return (f'<text x="{_f(x)}" y="{_f(y)}" font-size="{size}" text-anchor="{anchor}" fill="{fill}"{extra}>'
            f"{escape(label)}</text>")


def _legend(x: float, y: float, entries: list) -> list:
    """One row of legend entries: (label, colour, dashed)."""
    parts = []
    for label, colour, dashed in entries:
        dash = ' stroke-dasharray="6 4"' if dashed else ""
        parts.append(f'<line x1="{_f(x)}" y1="{_f(y)}" x2="{_f(x + 24)}" y2="{_f(y)}" stroke="{colour}" '
                     f'stroke-width="3"{dash}/>')
        parts.append(_text((x + 30, y + 4), label, anchor="start"))
        x += 42 + 7 * len(str(label))
    return parts


def _mix(colour_a: str, colour_b: str, t: float) -> str:
    a = [int(colour_a[i:i + 2], 16) for i in (1, 3, 5)]
    b = [int(colour_b[i:i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(f"{round(p + (q - p) * t):02x}" for p, q in zip(a, b))


def heat_colour(fraction: float) -> str:
    """Light to dark blue for a share in [0, 1]."""
    fraction = min(max(fraction, 0.0), 1.0)
    if fraction < 0.5:
        return _mix("#f4f6fb", "#4f7be8", fraction * 2)
    return _mix("#4f7be8", "#0b1f5c", fraction * 2 - 1)


def heat_map(matrix, row_labels, col_labels, chart: Chart, cell=40) -> Markup:
    """A confusion-matrix heat map: one <rect> and count per cell, shaded by the share of its row."""
    x_label, y_label = chart.x_label or "Predicted class", chart.y_label or "True class"
    left, top, bottom = 96, 12, 96
    width, height = left + cell * len(col_labels) + 12, top + cell * len(row_labels) + bottom
    body = []
    for r, (row_label, row) in enumerate(zip(row_labels, matrix)):
        total = sum(row) or 1
        for c, (col_label, count) in enumerate(zip(col_labels, row)):
            x, y, share = left + c * cell, top + r * cell, count / total
            ink = "#ffffff" if share > 0.45 else INK
            edge = f' stroke="{INK}" stroke-width="1.5"' if r == c else ' stroke="#ffffff" stroke-width="1"'
            body.append(
                f'<g class="cell"><title>{escape(y_label)} {escape(row_label)}, {escape(x_label.lower())} '
                f'{escape(col_label)}: {count} ({share:.1%} of the row)</title>'
                f'<rect x="{_f(x)}" y="{_f(y)}" width="{cell}" height="{cell}" fill="{heat_colour(share)}"{edge}/>'
                + _text((x + cell / 2, y + cell / 2 + 4), str(count), size=11, fill=ink) + "</g>")
        body.append(_text((left - 6, top + r * cell + cell / 2 + 4), row_label, anchor="end"))
    base = top + cell * len(row_labels)
    for c, col_label in enumerate(col_labels):
        x = left + c * cell + cell / 2
        body.append(_text((x, base + 10), col_label, anchor="end",
                          extra=f' transform="rotate(-50 {_f(x)} {_f(base + 10)})"'))
    body.append(_text((left + cell * len(col_labels) / 2, height - 6), x_label, size=13))
    body.append(_text((14, top + cell * len(row_labels) / 2), y_label, size=13,
                      extra=f' transform="rotate(-90 14 {_f(top + cell * len(row_labels) / 2)})"'))
    desc = (f"{len(row_labels)} by {len(col_labels)} grid of counts, rows are the {y_label.lower()}, "
            f"columns the {x_label.lower()}; darker cells hold a larger share of their row.")
    return _svg(chart, (width, height), desc, body)


def line_chart(x_values, series, chart: Chart, y_range=None, y_format="{:.2f}") -> Markup:
    """One polyline per series. `series` is a list of (label, values aligned with x_values);
    values that are missing or not finite are left out. `y_range` fixes the axis (e.g. (0, 1))."""
    left, right, top, bottom, plot_w, plot_h = 56, 16, 36, 48, 480, 220
    ys = _finite(v for _, values in series for v in values)
    low, high = y_range if y_range else (min(ys, default=0.0), max(ys, default=1.0))
    y_ticks = nice_ticks(low, high)
    y_lo, y_hi = (low, high) if y_range else (y_ticks[0], y_ticks[-1])
    x_lo, x_hi = min(x_values, default=0), max(x_values, default=1)
    x_span, y_span = (x_hi - x_lo) or 1, (y_hi - y_lo) or 1

    def px(x):
        return left + (x - x_lo) / x_span * plot_w if x_hi > x_lo else left + plot_w / 2

    def py(y):
        return top + plot_h - (y - y_lo) / y_span * plot_h

    body = _axes(Plot(left, top, plot_w, plot_h),
                 [(py(t), y_format.format(t)) for t in y_ticks if y_lo <= t <= y_hi],
                 [(px(x), str(x)) for x in _thin(x_values)], chart)
    entries = []
    for i, (label, values) in enumerate(series):
        colour, dashed = PALETTE[i % len(PALETTE)], i % 2 == 1
        points = [(x, y) for x, y in zip(x_values, values) if _finite([y])]
        dash = ' stroke-dasharray="6 4"' if dashed else ""
        body.append(f'<polyline class="series" fill="none" stroke="{colour}" stroke-width="2.5"{dash} '
                    f'points="{" ".join(f"{_f(px(x))},{_f(py(y))}" for x, y in points)}">'
                    f"<title>{escape(label)}</title></polyline>")
        body.extend(f'<circle cx="{_f(px(x))}" cy="{_f(py(y))}" r="3.5" fill="{colour}">'
                    f"<title>{escape(label)}, {escape(chart.x_label.lower())} {x}: {escape(y_format.format(y))}</title>"
                    "</circle>" for x, y in points)
        entries.append((label, colour, dashed))
    body.extend(_legend(left, 16, entries))
    desc = f"{chart.y_label} against {chart.x_label.lower()} for " + ", ".join(str(label) for label, _ in series) + "."
    return _svg(chart, (left + plot_w + right, top + plot_h + bottom), desc, body)


def _thin(values, most=12):
    values = list(values)
    step = max(1, math.ceil(len(values) / most))
    return values[::step]


def _axes(plot: Plot, y_ticks, x_ticks, chart: Chart) -> list:
    """Grid lines, tick labels and axis titles. Ticks are (pixel position, label)."""
    left, top, plot_w, plot_h = plot
    base = top + plot_h
    parts = [f'<line x1="{_f(left)}" y1="{_f(y)}" x2="{_f(left + plot_w)}" y2="{_f(y)}" stroke="{GRID}"/>'
             + _text((left - 6, y + 4), label, size=11, anchor="end", fill=MUTED) for y, label in y_ticks]
    parts += [f'<line x1="{_f(x)}" y1="{_f(base)}" x2="{_f(x)}" y2="{_f(base + 5)}" stroke="{MUTED}"/>'
              + _text((x, base + 18), label, size=11, fill=MUTED) for x, label in x_ticks]
    parts.append(f'<line x1="{_f(left)}" y1="{_f(base)}" x2="{_f(left + plot_w)}" y2="{_f(base)}" '
                 f'stroke="{MUTED}"/>')
    parts.append(f'<line x1="{_f(left)}" y1="{_f(top)}" x2="{_f(left)}" y2="{_f(base)}" stroke="{MUTED}"/>')
    parts.append(_text((left + plot_w / 2, base + 38), chart.x_label, size=13))
    mid = top + plot_h / 2
    parts.append(_text((14, mid), chart.y_label, size=13, extra=f' transform="rotate(-90 14 {_f(mid)})"'))
    return parts


def bar_chart(categories, series, chart: Chart, value_max=None, value_format="{:,.0f}") -> Markup:
    """Horizontal grouped bars, one group per category (readable at phone width).
    `series` is a list of (label, values aligned with categories); `chart.x_label` names the values."""
    value_label = chart.x_label
    left, right, top, plot_w, bar_h = 100, 56, 36, 400, 14
    group_h = bar_h * len(series) + 10
    plot_h = group_h * len(categories)
    values = _finite(v for _, vals in series for v in vals)
    ticks = nice_ticks(0, value_max if value_max else max(values, default=1))
    top_value = value_max if value_max else ticks[-1]

    def px(v):
        return left + v / (top_value or 1) * plot_w

    body = [f'<line x1="{_f(px(t))}" y1="{top}" x2="{_f(px(t))}" y2="{_f(top + plot_h)}" stroke="{GRID}"/>'
            + _text((px(t), top + plot_h + 16), value_format.format(t), size=11, fill=MUTED)
            for t in ticks if t <= top_value]
    for g, category in enumerate(categories):
        y0 = top + g * group_h + 5
        body.append(_text((left - 6, y0 + bar_h * len(series) / 2 + 4), category, anchor="end"))
        for s, (label, vals) in enumerate(series):
            value = vals[g] if g < len(vals) and _finite([vals[g]]) else 0
            y, colour = y0 + s * bar_h, PALETTE[s % len(PALETTE)]
            body.append(f'<g class="bar"><title>{escape(category)}, {escape(label)}: '
                        f'{escape(value_format.format(value))}</title>'
                        f'<rect x="{left}" y="{_f(y)}" width="{_f(px(value) - left)}" height="{bar_h - 2}" '
                        f'fill="{colour}"/>' + _text((px(value) + 4, y + bar_h - 4), value_format.format(value),
                                                     size=10, anchor="start", fill=MUTED) + "</g>")
    body.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{_f(top + plot_h)}" stroke="{MUTED}"/>')
    body.append(_text((left + plot_w / 2, top + plot_h + 36), value_label, size=13))
    if len(series) > 1:
        body.extend(_legend(left, 16, [(label, PALETTE[i % len(PALETTE)], False)
                                       for i, (label, _) in enumerate(series)]))
    desc = (f"{value_label} for each of {len(categories)} categories: "
            + ", ".join(str(label) for label, _ in series) + ".")
    return _svg(chart, (left + plot_w + right, top + plot_h + 46), desc, body)


def reliability_diagram(bins, chart: Chart) -> Markup:
    """Accuracy per confidence bin as bars, the bin's mean confidence as a line across it, and the
    diagonal of perfect calibration. `bins`: [{low, high, count, accuracy, confidence}]; empty
    bins (count 0) draw nothing."""
    left, top, size, bottom = 56, 36, 300, 48

    def px(v):
        return left + v * size

    def py(v):
        return top + size - v * size

    ticks = [i / 5 for i in range(6)]
    body = _axes(Plot(left, top, size, size), [(py(t), f"{t:.0%}") for t in ticks],
                 [(px(t), f"{t:.0%}") for t in ticks], Chart(chart.id, chart.title, "Confidence", "Accuracy"))
    for b in bins:
        if not b.get("count") or len(_finite([b.get("accuracy"), b.get("confidence"),
                                               b.get("low"), b.get("high")])) < 4:
            continue
        acc, conf, x, w = b["accuracy"], b["confidence"], px(b["low"]), px(b["high"]) - px(b["low"])
        body.append(f'<g class="bin"><title>Confidence {b["low"]:.2f} to {b["high"]:.2f}: {b["count"]} images, '
                    f'accuracy {acc:.1%}, mean confidence {conf:.1%}</title>'
                    f'<rect x="{_f(x)}" y="{_f(py(acc))}" width="{_f(w)}" height="{_f(px(acc) - left)}" '
                    f'fill="{PALETTE[0]}" fill-opacity="0.8" stroke="#ffffff"/>'
                    f'<line x1="{_f(x)}" y1="{_f(py(conf))}" x2="{_f(x + w)}" y2="{_f(py(conf))}" '
                    f'stroke="{PALETTE[1]}" stroke-width="3"/></g>')
    body.append(f'<line x1="{_f(px(0))}" y1="{_f(py(0))}" x2="{_f(px(1))}" y2="{_f(py(1))}" stroke="{INK}" '
                'stroke-width="1.5" stroke-dasharray="5 4"/>')
    body.extend(_legend(left - 40, 16, [("Accuracy", PALETTE[0], False), ("Confidence", PALETTE[1], False),
                                        ("Perfect", INK, True)]))
    desc = ("Validation accuracy of the images in each confidence bin as bars, their mean confidence as a "
            "line across each bar, and the diagonal where accuracy equals confidence; bars below their "
            "line mean over-confidence.")
    return _svg(chart, (left + size + 24, top + size + bottom), desc, body)


def histogram(edges, series, chart: Chart, marker=None) -> Markup:
    """Vertical bars side by side per bin, one colour per series; `series` is a list of (label,
    shares aligned with the bins). The bins are drawn equally wide, labelled by their edges; the
    first and last are open-ended ("below", "and above"). `marker`, a score (the threshold), is
    drawn as a dashed line where it falls."""
    left, right, top, bottom, plot_w, plot_h = 56, 16, 36, 56, 480, 200
    bins = len(edges) - 1
    values = _finite(v for _, shares in series for v in shares)
    ticks = nice_ticks(0, max(values, default=1) or 1)
    bin_w = plot_w / bins
    bar_w = (bin_w - 2) / max(len(series), 1)

    def py(v):
        return top + plot_h - v / (ticks[-1] or 1) * plot_h

    def px(score):
        """Where a score falls, linearly inside its bin."""
        i = min(max(sum(1 for e in edges[1:-1] if e <= score), 0), bins - 1)
        inside = (score - edges[i]) / ((edges[i + 1] - edges[i]) or 1)
        return left + (i + min(max(inside, 0.0), 1.0)) * bin_w

    body = _axes(Plot(left, top, plot_w, plot_h), [(py(t), f"{t:.0%}") for t in ticks],
                 [(left + i * bin_w, f"{e:.3g}") for i, e in enumerate(edges) if i % max(1, bins // 5) == 0], chart)
    for s, (label, shares) in enumerate(series):
        colour = PALETTE[s % len(PALETTE)]
        for i, value in enumerate(shares):
            low = "below" if i == 0 else f"{edges[i]:g}"
            high = "and above" if i == bins - 1 else f"to {edges[i + 1]:g}"
            x = left + i * bin_w + 1 + s * bar_w
            body.append(f'<g class="bar"><title>{escape(label)}, novelty {escape(low)} {escape(high)}: '
                        f'{value:.1%}</title><rect x="{_f(x)}" y="{_f(py(value))}" width="{_f(bar_w)}" '
                        f'height="{_f(top + plot_h - py(value))}" fill="{colour}"/></g>')
    if marker is not None and _finite([marker]):
        x = px(marker)
        body.append(f'<line x1="{_f(x)}" y1="{top}" x2="{_f(x)}" y2="{_f(top + plot_h)}" stroke="{INK}" '
                    f'stroke-width="1.5" stroke-dasharray="5 4"><title>Threshold {marker:g}</title></line>')
    entries = [(label, PALETTE[i % len(PALETTE)], False) for i, (label, _) in enumerate(series)]
    body.extend(_legend(left, 16, entries + ([("Threshold", INK, True)] if marker is not None else [])))
    desc = (f"Share of photos in each of {bins} novelty-score bins for " + ", ".join(str(label) for label, _ in series)
            + "; the first and last bins are open-ended.")
    return _svg(chart, (left + plot_w + right, top + plot_h + bottom), desc, body)
