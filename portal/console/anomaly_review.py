"""What the console's review of one anomaly shows (reads only): the figures, the chart of the window against
the baseline, and the top runs, models and projects of the events received in the window."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from billing.guardrails.anomalies.baseline import minutes
from billing.guardrails.anomalies.selectors import anomaly_multiple
from billing.guardrails.models import Anomaly
from billing.invoicing.compute import upcoming_invoice
from billing.usage.models import UsageEvent
from portal.dashboard.charts import nice_max, short
from portal.dashboard.costs import cost_of, unit_costs

WIDTH, HEIGHT, LEFT, BOTTOM, TOP = 720, 200, 56, 22, 10
TOP_N = 5
EVENTS_MAX = 100_000  # the review reads at most this many events of the window
LATE = timedelta(days=1)  # events are looked for from this long before the window by their own timestamp


@dataclass
class ChartBar:
    x: float
    y: float
    width: float
    height: float
    label: str
    rate: Decimal
    in_window: bool


@dataclass
class Chart:
    """Spend per minute between samples (bars), the baseline and the bar it had to clear (lines), the window
    shaded. Geometry only: the template draws it."""

    bars: list[ChartBar]
    baseline_y: float
    threshold_y: float
    window_x: float
    window_width: float
    ticks: list[tuple[float, str]]
    x_labels: list[tuple[float, str, str]]  # x, text, text-anchor
    width: int = WIDTH
    height: int = HEIGHT


def anomaly_chart(anomaly: Anomaly) -> Chart | None:
    rates = []
    for lo_s, hi_s, spend in anomaly.series:
        lo, hi = (datetime.fromtimestamp(int(t), timezone.utc) for t in (lo_s, hi_s))
        rates.append((lo, hi, Decimal(str(spend)) / minutes(hi - lo) if hi > lo else Decimal(str(spend))))
    if not rates:
        return None
    lo_all, hi_all = rates[0][0], rates[-1][1]
    span = (hi_all - lo_all).total_seconds() or 1.0
    plot_w, plot_h = WIDTH - LEFT - 4, HEIGHT - BOTTOM - TOP
    threshold = anomaly.baseline_rate * anomaly.factor
    top = nice_max(max([r for _, _, r in rates] + [threshold]))

    def x(at: datetime) -> float:
        return round(LEFT + plot_w * (at - lo_all).total_seconds() / span, 2)

    def y(value: Decimal) -> float:
        return round(TOP + plot_h * (1 - float(min(value, top) / top)), 2)

    bars = [ChartBar(x(lo), y(rate), max(round(x(hi) - x(lo) - 1, 2), 1.0), round(TOP + plot_h - y(rate), 2),
                     f"{lo:%H:%M:%S} to {hi:%H:%M:%S} UTC", rate, lo >= anomaly.window_start)
            for lo, hi, rate in rates]
    ticks = [(y(top * Decimal(str(f))), short(top * Decimal(str(f)))) for f in (0, 0.5, 1)]
    window_x = x(max(anomaly.window_start, lo_all))
    labels = [(x(lo_all), f"{lo_all:%H:%M}", "start"), (window_x, f"{anomaly.window_start:%H:%M}", "middle"),
              (x(hi_all), f"{hi_all:%H:%M}", "end")]
    return Chart(bars, y(anomaly.baseline_rate), y(threshold), window_x, round(x(anomaly.window_end) - window_x, 2),
                 ticks, labels)


@dataclass
class Slice:
    name: str
    events: int = 0
    cost: Decimal = Decimal(0)
    quantities: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))


@dataclass
class Review:
    anomaly: Anomaly
    multiple: Decimal
    expected: Decimal
    threshold: Decimal
    chart: Chart | None
    runs: list[Slice]
    models: list[Slice]
    projects: list[Slice]
    events: int


def _top(slices: dict[str, Slice]) -> list[Slice]:
    for piece in slices.values():
        piece.quantities = dict(piece.quantities)  # templates look ".items" up as a key first
    return sorted(slices.values(), key=lambda s: (-s.cost, -s.events, s.name))[:TOP_N]


def anomaly_review(*, anomaly: Anomaly) -> Review:
    """The review of one anomaly: its events are those received in its window (the counter counts at ingest),
    each costed at its charge lines' average price so far (portal/dashboard/costs.py)."""
    costs = unit_costs(upcoming_invoice(customer=anomaly.customer, now=anomaly.window_end))
    rows = (UsageEvent.objects.filter(customer=anomaly.customer, billable=True, usage_at__gte=anomaly.window_start - LATE,
                                      received_at__gte=anomaly.window_start, received_at__lte=anomaly.window_end)
            .order_by().values_list("meter__key", "dimensions", "quantity", "run_id", "project__key")[:EVENTS_MAX])
    runs: dict[str, Slice] = {}
    models: dict[str, Slice] = {}
    projects: dict[str, Slice] = {}
    count = 0
    for meter, dims, quantity, run_id, project in rows:
        count += 1
        dims = dims or {}
        cost = cost_of(costs, meter, dims, quantity)
        for table, key in ((runs, run_id), (models, dims.get("model")), (projects, project)):
            if not key:
                continue
            piece = table.setdefault(key, Slice(key))
            piece.events += 1
            piece.cost += cost
            piece.quantities[meter] += quantity
    expected = anomaly.baseline_rate * minutes(anomaly.window_end - anomaly.window_start)
    return Review(anomaly, anomaly_multiple(anomaly), expected, expected * anomaly.factor, anomaly_chart(anomaly),
                  _top(runs), _top(models), _top(projects), count)


def review_as_context(review: Review) -> dict[str, Any]:
    return {"review": review, "anomaly": review.anomaly, "chart": review.chart,
            "review_tables": [("runs", review.runs), ("models", review.models), ("projects", review.projects)]}
