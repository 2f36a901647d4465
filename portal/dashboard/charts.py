"""Server-rendered SVG charts: geometry only (the template draws it), no JavaScript.

Each chart carries its data as rows too, so the template shows the same figures as a table beside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

WIDTH, HEIGHT, PAD_LEFT, PAD_BOTTOM, PAD_TOP = 720, 180, 56, 22, 8


@dataclass
class Bar:
    label: str
    value: Decimal
    x: float
    y: float
    width: float
    height: float


@dataclass
class Tick:
    y: float
    label: str


@dataclass
class BarChart:
    chart_id: str
    title: str
    unit: str
    bars: list[Bar]
    ticks: list[Tick] = field(default_factory=list)
    x_labels: list[tuple[float, str]] = field(default_factory=list)
    width: int = WIDTH
    height: int = HEIGHT
    horizontal: bool = False

    @property
    def total(self) -> Decimal:
        return sum((b.value for b in self.bars), Decimal(0))


def nice_max(value: Decimal) -> Decimal:
    """A round axis maximum at or above ``value`` (1, 2 or 5 times a power of ten)."""
    if value <= 0:
        return Decimal(1)
    exponent = value.adjusted()
    for step in (1, 2, 5, 10):
        candidate = Decimal(step).scaleb(exponent)
        if candidate >= value:
            return candidate
    return Decimal(10).scaleb(exponent)


def short(value: Decimal) -> str:
    """12345678 -> 12.3M: for axis ticks only (tables show exact figures)."""
    number = float(value)  # display only
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(number) >= limit:
            return f"{number / limit:.3g}{suffix}"
    return f"{number:.3g}"


def time_bars(chart_id: str, title: str, unit: str, points: list[tuple[datetime, Decimal]], label_format: str,
              every: int) -> BarChart:
    """Vertical bars over time; an x label every ``every`` bars."""
    top = nice_max(max((v for _, v in points), default=Decimal(0)))
    plot_w, plot_h = WIDTH - PAD_LEFT - 4, HEIGHT - PAD_BOTTOM - PAD_TOP
    slot = plot_w / max(len(points), 1)
    bars, labels = [], []
    for index, (moment, value) in enumerate(points):
        h = float(max(value, Decimal(0)) / top) * plot_h
        x = PAD_LEFT + index * slot
        bars.append(Bar(moment.strftime("%Y-%m-%d %H:%M UTC" if "H" in label_format else "%Y-%m-%d"), value,
                        round(x + slot * 0.1, 2), round(PAD_TOP + plot_h - h, 2), round(slot * 0.8, 2), round(h, 2)))
        if index % every == 0:
            labels.append((round(x + slot / 2, 2), moment.strftime(label_format)))
    ticks = [Tick(round(PAD_TOP + plot_h * (1 - f), 2), short(top * Decimal(str(f)))) for f in (0, 0.5, 1)]
    return BarChart(chart_id, title, unit, bars, ticks, labels)


def ranked_bars(chart_id: str, title: str, unit: str, items: list[tuple[str, Decimal]]) -> BarChart:
    """Horizontal bars, largest first (cost by model, by project)."""
    row_h = 26
    height = max(len(items), 1) * row_h + 8
    top = max((v for _, v in items), default=Decimal(0)) or Decimal(1)
    label_w, plot_w = 170, WIDTH - 170 - 110
    bars = []
    for index, (label, value) in enumerate(items):
        w = float(max(value, Decimal(0)) / top) * plot_w
        bars.append(Bar(label, value, label_w, index * row_h + 4, round(w, 2), row_h - 8))
    return BarChart(chart_id, title, unit, bars, height=height, horizontal=True)
