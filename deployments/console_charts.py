"""The console's charts as inline SVG strings, drawn on the server: no chart library, nothing to vendor, and the
same markup whether the page renders it or /console/api/samples sends it for the 2-second refresh. Pure
functions: every label is escaped here, so the result may go into a page (or innerHTML) as it is."""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

LEFT, RIGHT, TOP, BOTTOM = 52, 12, 24, 22  # room for the y labels, the title, the x labels


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 times a power of ten that is >= `value` (1 for nothing to show)."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * power * (1 + 1e-9):
            return step * power
    return 10 * power


def fmt(value: float) -> str:
    """A short axis label: 0, 0.25, 12, 340, 1.5k, 2M."""
    magnitude = abs(value)
    if magnitude >= 1e6:
        return f"{value / 1e6:.3g}M"
    if magnitude >= 1e3:
        return f"{value / 1e3:.3g}k"
    if magnitude >= 1 or value == 0:
        return f"{value:.3g}"
    return f"{value:.8f}".rstrip("0")[: 4 + max(0, -math.floor(math.log10(magnitude)))]  # 0.25, 0.00005


def _frame(title: str, unit: str, width: int, height: int, count: int, kind: str) -> list[str]:
    title = f"{title} ({unit})" if unit else title
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart chart-{kind}" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{escape(title)}" data-points="{count}">',
        f'<text class="chart-title" x="{LEFT}" y="15">{escape(title)}</text>',
    ]


def _y_axis(parts: list[str], top: float, width: int, height: int) -> None:
    """Grid lines at 0, half and the top of the scale, labelled on the left."""
    plot_h = height - TOP - BOTTOM
    for fraction in (0.0, 0.5, 1.0):
        y = TOP + plot_h * (1 - fraction)
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{width - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>')
        label = escape(fmt(top * fraction))
        parts.append(f'<text class="axis" x="{LEFT - 4}" y="{y + 4:.1f}" text-anchor="end">{label}</text>')


def line_chart(
    points: Sequence[tuple[float, float]],
    *,
    title: str,
    unit: str = "",
    x_range: tuple[float, float],
    x_labels: Sequence[tuple[float, str]] = (),
    width: int = 560,
    height: int = 180,
    line: bool = True,
) -> str:
    """`points` (x, y) within `x_range`, a dot each (`class="pt"`, with its value as a tooltip), joined by a line
    unless `line` is False (a scatter: one dot per request)."""
    x0, x1 = x_range
    shown = [(x, y) for x, y in points if x0 <= x <= x1 and math.isfinite(y)]
    parts = _frame(title, unit, width, height, len(shown), "line")
    top = nice_ceiling(max((y for _, y in shown), default=0.0))
    _y_axis(parts, top, width, height)
    plot_w, plot_h = width - LEFT - RIGHT, height - TOP - BOTTOM
    span = (x1 - x0) or 1.0

    def place(x: float, y: float) -> tuple[float, float]:
        return LEFT + (x - x0) / span * plot_w, TOP + plot_h * (1 - max(0.0, y) / top)

    for x, label in x_labels:
        px, _ = place(x, 0)
        parts.append(f'<text class="axis" x="{px:.1f}" y="{height - 6}" text-anchor="middle">{escape(label)}</text>')
    placed = [place(x, y) for x, y in shown]
    if line and len(placed) > 1:
        coords = " ".join(f"{px:.1f},{py:.1f}" for px, py in placed)
        parts.append(f'<polyline class="line" fill="none" points="{coords}"/>')
    for (px, py), (_, y) in zip(placed, shown, strict=True):
        tip = escape(f"{fmt(y)} {unit}".strip())
        parts.append(f'<circle class="pt" cx="{px:.1f}" cy="{py:.1f}" r="2.5"><title>{tip}</title></circle>')
    if not shown:
        parts.append(
            f'<text class="empty" x="{LEFT + plot_w / 2:.1f}" y="{TOP + plot_h / 2:.1f}" text-anchor="middle">'
            "no requests in this window</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(
    bars: Sequence[tuple[str, float]], *, title: str, unit: str = "", width: int = 560, height: int = 180
) -> str:
    """One bar per (label, value), in order; every label under its bar when they fit, else every n-th."""
    parts = _frame(title, unit, width, height, len(bars), "bar")
    top = nice_ceiling(max((v for _, v in bars), default=0.0))
    _y_axis(parts, top, width, height)
    plot_w, plot_h = width - LEFT - RIGHT, height - TOP - BOTTOM
    slot = plot_w / max(1, len(bars))
    every = max(1, math.ceil(len(bars) * 40 / plot_w))  # about 40 px per label
    for i, (label, value) in enumerate(bars):
        h = plot_h * max(0.0, value) / top
        x = LEFT + i * slot + slot * 0.15
        parts.append(
            f'<rect class="bar" x="{x:.1f}" y="{TOP + plot_h - h:.1f}" width="{slot * 0.7:.1f}" height="{h:.1f}">'
            f"<title>{escape(f'{label}: {fmt(value)} {unit}'.strip())}</title></rect>"
        )
        if i % every == 0:
            cx = LEFT + (i + 0.5) * slot
            parts.append(
                f'<text class="axis" x="{cx:.1f}" y="{height - 6}" text-anchor="middle">{escape(label)}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


def relative_time_labels(window_s: float, count: int = 5) -> list[tuple[float, str]]:
    """Labels for an x axis of seconds before now: -5m ... now."""
    labels = []
    for i in range(count):
        x = -window_s + window_s * i / (count - 1)
        if x == 0:
            labels.append((0.0, "now"))
        elif window_s >= 120:
            labels.append((x, f"{x / 60:.3g}m"))
        else:
            labels.append((x, f"{x:.3g}s"))
    return labels
