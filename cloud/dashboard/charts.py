"""Charts as plain SVG, drawn on the server: the billing page's daily cost and GPU-hours, and a
deployment's requests per minute.

No charting library: the page's CSP allows only our scripts, the chart must read without
JavaScript, and two series over ~30 days (or 60 minutes) is a few dozen rectangles. Daily: bars
are cost (left axis), the line is GPU-hours (right axis). Per minute: bars are requests, the
errors among them drawn over their foot. Every bar has a <title> so a hover or a screen reader
gets the exact numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

from django.utils.html import escape

WIDTH, HEIGHT, PAD_L, PAD_R, PAD_T, PAD_B = 720, 220, 52, 52, 12, 28


@dataclass(frozen=True)
class Day:
    day: date
    cost: Decimal
    gpu_hours: Decimal


def daily_chart_svg(days: list[Day]) -> str:
    if not days:
        return ""
    plot_w, plot_h = WIDTH - PAD_L - PAD_R, HEIGHT - PAD_T - PAD_B
    max_cost = max((d.cost for d in days), default=Decimal(0)) or Decimal(1)
    max_hours = max((d.gpu_hours for d in days), default=Decimal(0)) or Decimal(1)
    step = plot_w / len(days)
    parts = [f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" class="chart" role="img" '
             f'aria-label="Daily cost and GPU-hours, {escape(days[0].day)} to {escape(days[-1].day)}">',
             f'<line x1="{PAD_L}" y1="{PAD_T + plot_h}" x2="{PAD_L + plot_w}" y2="{PAD_T + plot_h}" class="axis"/>',
             f'<text x="{PAD_L - 6}" y="{PAD_T + 10}" text-anchor="end" class="tick">${max_cost:.2f}</text>',
             f'<text x="{PAD_L - 6}" y="{PAD_T + plot_h}" text-anchor="end" class="tick">$0</text>',
             f'<text x="{PAD_L + plot_w + 6}" y="{PAD_T + 10}" class="tick">{max_hours:.1f} GPU-h</text>']
    points = []
    for i, d in enumerate(days):
        x = PAD_L + i * step
        h = float(d.cost / max_cost) * plot_h
        parts.append(f'<rect x="{x + step * 0.15:.1f}" y="{PAD_T + plot_h - h:.1f}" width="{step * 0.7:.1f}" '
                     f'height="{h:.1f}" class="bar"><title>{escape(d.day)}: ${d.cost:.2f}, '
                     f'{d.gpu_hours:.2f} GPU-hours</title></rect>')
        y = PAD_T + plot_h - float(d.gpu_hours / max_hours) * plot_h
        points.append(f"{x + step / 2:.1f},{y:.1f}")
        if i % max(1, len(days) // 6) == 0:
            parts.append(f'<text x="{x + step / 2:.1f}" y="{HEIGHT - 8}" text-anchor="middle" class="tick">'
                         f'{d.day:%m-%d}</text>')
    parts.append(f'<polyline points="{" ".join(points)}" class="line"/>')
    parts.append("</svg>")
    return "".join(parts)


@dataclass(frozen=True)
class MinuteCount:
    minute: datetime
    requests: int
    errors: int


def minutes_chart_svg(minutes: list[MinuteCount]) -> str:
    if not minutes:
        return ""
    plot_w, plot_h = WIDTH - PAD_L - PAD_R, HEIGHT - PAD_T - PAD_B
    most = max(m.requests for m in minutes) or 1
    step = plot_w / len(minutes)
    parts = [f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" class="chart" role="img" '
             f'aria-label="Requests per minute, {minutes[0].minute:%H:%M} to {minutes[-1].minute:%H:%M} UTC">',
             f'<line x1="{PAD_L}" y1="{PAD_T + plot_h}" x2="{PAD_L + plot_w}" y2="{PAD_T + plot_h}" class="axis"/>',
             f'<text x="{PAD_L - 6}" y="{PAD_T + 10}" text-anchor="end" class="tick">{most}</text>',
             f'<text x="{PAD_L - 6}" y="{PAD_T + plot_h}" text-anchor="end" class="tick">0</text>']
    for i, m in enumerate(minutes):
        x = PAD_L + i * step
        if m.requests:
            h = m.requests / most * plot_h
            errors_h = m.errors / most * plot_h
            title = f"<title>{m.minute:%H:%M} UTC: {m.requests} request{'s' if m.requests != 1 else ''}, " \
                    f"{m.errors} error{'s' if m.errors != 1 else ''}</title>"
            parts.append(f'<rect x="{x + step * 0.1:.1f}" y="{PAD_T + plot_h - h:.1f}" width="{step * 0.8:.1f}" '
                         f'height="{h:.1f}" class="bar">{title}</rect>')
            if m.errors:
                parts.append(f'<rect x="{x + step * 0.1:.1f}" y="{PAD_T + plot_h - errors_h:.1f}" '
                             f'width="{step * 0.8:.1f}" height="{errors_h:.1f}" class="err">{title}</rect>')
        if i % max(1, len(minutes) // 6) == 0:
            parts.append(f'<text x="{x + step / 2:.1f}" y="{HEIGHT - 8}" text-anchor="middle" class="tick">'
                         f'{m.minute:%H:%M}</text>')
    parts.append("</svg>")
    return "".join(parts)
