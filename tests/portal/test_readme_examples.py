"""README's "A first API call" block, run as written against a seeded demo: every request answers as
the comments say, and every event it sends is billed (it lands on a line of the upcoming invoice)."""

from __future__ import annotations

import json
import re
import shlex
from datetime import datetime, timezone
from decimal import Decimal
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.test import Client

README = Path(__file__).resolve().parents[2] / "README.md"


def first_api_call_block() -> str:
    text = README.read_text()
    section = text[text.index("## A first API call"):]
    start = section.index("```sh\n") + 6
    return section[start:section.index("\n```", start)]


def curl_commands(block: str, values: dict[str, str]) -> list[list[str]]:
    """Each ``curl`` command of the block as the shell would split it, the variables set to ``values``."""
    lines = [line for line in block.splitlines() if not line.lstrip().startswith("#") and "=" not in line.split(" ")[0]]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    for name, value in values.items():
        text = text.replace(f"${name}", value)
    commands: list[list[str]] = []
    for token in shlex.split(text):
        if token == "curl":
            commands.append([])
        commands[-1].append(token)
    return commands


def run(client: Client, argv: list[str]) -> Any:
    method, headers, data, url = "GET", {}, None, ""
    args = iter(argv[1:])
    for arg in args:
        if arg == "-X":
            method = next(args)
        elif arg == "-H":
            name, _, value = next(args).partition(": ")
            headers[name] = value
        elif arg == "-d":
            data = next(args)
        elif arg.startswith("http"):
            url = arg
        else:
            assert arg == "-s", f"README uses a curl option this test does not know: {arg}"
    path = url.removeprefix("http://127.0.0.1:8000")
    return client.generic(method, path, data or "", content_type=headers.get("Content-Type", ""),
                          HTTP_AUTHORIZATION=headers["Authorization"])


def line_quantities(invoice: dict[str, Any]) -> dict[str, Decimal]:
    return {line["description"]: Decimal(line["quantity"]) for line in invoice["lines"]}


@pytest.mark.django_db
def test_the_readme_block_answers_as_it_says_and_bills_every_event_it_sends() -> None:
    # given the demo that make run seeds
    out = StringIO()
    call_command("seed_demo", "--json", "--events", "50", stdout=out)
    demo = json.loads(out.getvalue())
    client = Client()
    values = {"KEY": demo["ingest_api_key"], "READ_KEY": demo["read_api_key"],
              "NOW": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "RUN": "1765000000"}
    commands = curl_commands(first_api_call_block(), values)
    upcoming = [c for c in commands if any("upcoming-invoice" in arg for arg in c)]
    assert len(commands) == 4 and commands[3] == upcoming[0]
    before = run(client, upcoming[0]).json()

    # when the block runs
    single, batch, usage, after_response = (run(client, c) for c in commands[:3] + upcoming)

    # then the answers are the ones its comments show
    assert single.status_code == 201 and single.json() == {"event_id": "req-1765000000-1", "status": "accepted"}
    assert batch.status_code == 200
    assert [r["status"] for r in batch.json()["results"]] == ["accepted", "accepted"]
    assert usage.status_code == 200
    assert run(client, commands[0]).json()["status"] == "duplicate"  # the same request again
    # and every event is on the upcoming invoice: each one's quantity moved a line of its own charge
    after = after_response.json()
    grew = {name: q - line_quantities(before).get(name, Decimal(0)) for name, q in line_quantities(after).items()}
    assert sorted(q for q in grew.values() if q) == [Decimal(1), Decimal(800), Decimal(1200)], grew
