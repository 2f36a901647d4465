"""The demo's usage (``manage.py seed_demo``): agent runs that look like agent runs, on every demo meter, for
last month and the current one.

A run belongs to one project and one agent, and is a sequence of steps a few seconds apart, numbered from 1,
each with a ``parent_id`` naming the step before: every step is a model call (input and output tokens on
``llm_tokens``), some call a tool (``api_calls``), and the run's first event counts its agent on
``active_agents`` (``unique_count`` by ``agent_id``). Batch jobs (embeddings, evaluations) use
``gpu_seconds``. Event ids carry the month, so a seed in a later month adds that month's usage once.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

AGENTS = {"chatbot": ("support-bot", ["gpt-4o-mini", "gpt-4o"]),
          "research-agent": ("researcher", ["claude-sonnet", "gpt-4o"])}
TOOLS = ["web_search", "retrieve_docs", "run_sql", "send_email"]


@dataclass
class Span:
    """Where a batch of demo usage goes: [start, end), and the label its event ids carry."""

    start: datetime
    end: datetime
    label: str


def _event(event_id: str, customer: str, project: str, meter: str, quantity: int, at: datetime,
           dimensions: dict[str, str], trace: dict[str, Any] | None = None) -> bytes:
    body: dict[str, Any] = {"event_id": event_id, "customer": customer, "project": project, "meter": meter,
                            "quantity": quantity, "timestamp": at.isoformat(), "dimensions": dimensions}
    if trace is not None:
        body["trace"] = trace
    return json.dumps(body).encode()


def _run(rng: random.Random, customer: str, span: Span, index: int, at: datetime) -> list[bytes]:
    """One agent run: its project, its agent, its steps in order."""
    project = rng.choice(sorted(AGENTS))
    agent, models = AGENTS[project]
    run_id = f"run-{span.label}-{index:04d}"
    out = [_event(f"demo-{run_id}-agent", customer, project, "active_agents", 1, at, {"agent_id": agent},
                  {"run_id": run_id, "agent": agent})]
    parent = None
    for step in range(1, rng.randint(3, 8) + 1):
        at += timedelta(seconds=rng.randint(2, 40))
        model = rng.choice(models)
        step_id = f"demo-{run_id}-s{step}"
        trace = {"run_id": run_id, "step": step, "agent": agent, **({"parent_id": parent} if parent else {})}
        out.append(_event(f"{step_id}-in", customer, project, "llm_tokens", rng.randint(800, 12000), at,
                          {"model": model, "direction": "input"}, trace))
        out.append(_event(f"{step_id}-out", customer, project, "llm_tokens", rng.randint(100, 2500), at,
                          {"model": model, "direction": "output"}, trace))
        if rng.random() < 0.5:
            out.append(_event(f"{step_id}-tool", customer, project, "api_calls", 1, at,
                              {"tool": rng.choice(TOOLS)}, trace))
        parent = step_id
    return out


def demo_events(*, customer: str, span: Span, count: int, seed: int) -> list[bytes]:
    """Exactly ``count`` events in ``span``: a batch GPU job a day or so, then agent runs at random moments
    (the last run is cut short when the count is reached)."""
    rng = random.Random(seed)  # noqa: S311 - demo data, deterministic ids and values
    seconds = max(int((span.end - span.start).total_seconds()) - 600, 1)  # the last run ends before span.end
    events: list[bytes] = []
    for day in range(min(max(1, seconds // 86400), count // 10)):
        at = min(span.start + timedelta(days=day, seconds=rng.randrange(min(seconds, 86400))),
                 span.end - timedelta(minutes=1))
        project = rng.choice(sorted(AGENTS))
        events.append(_event(f"demo-gpu-{span.label}-{day:02d}", customer, project, "gpu_seconds",
                             rng.randint(600, 4800), at, {"job": rng.choice(["embeddings", "eval", "fine-tune"])}))
    runs = 0
    while len(events) < count:
        runs += 1
        events += _run(rng, customer, span, runs, span.start + timedelta(seconds=rng.randrange(seconds)))
    return events[:count]
