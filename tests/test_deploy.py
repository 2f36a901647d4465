"""The deployment files, checked without a container runtime: compose.yaml parses and runs exactly the commands
docs/operations.md documents (so the two cannot drift apart), with restart policies and health checks; the
Dockerfile runs as a non-root user a command that exists in this repository; the LICENSE is the one pyproject
declares."""

from __future__ import annotations

import ipaddress
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]
APP_SERVICES = ("migrate", "web", "worker", "beat")
LONG_RUNNING = ("postgres", "redis", "tigerbeetle", "web", "worker", "beat")
ONE_OFF = ("tigerbeetle-format", "migrate")


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return compose["services"]


def documented_commands(markdown: str) -> set[str]:
    """Every inline code span of ``markdown`` outside fenced blocks, and every line inside them."""
    documented: set[str] = set()
    outside = []
    for i, chunk in enumerate(re.split(r"^```[^\n]*\n", markdown, flags=re.M)):
        if i % 2:  # inside a fence
            documented.update(line.strip() for line in chunk.splitlines() if line.strip())
        else:
            outside.append(chunk)
    documented.update(re.findall(r"`([^`\n]+)`", "\n".join(outside)))
    return documented


def command_of(service: dict[str, Any]) -> str:
    """The service's command as a string: a shell entrypoint's script as it is, else the argv joined."""
    command = service["command"]
    if service.get("entrypoint") == ["/bin/sh", "-c"]:
        assert len(command) == 1, command
        return str(command[0])
    return " ".join(command) if isinstance(command, list) else str(command)


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def runtime_dependencies() -> list[str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


def test_every_service_command_in_compose_is_one_operations_documents(services: dict[str, Any]) -> None:
    documented = documented_commands((ROOT / "docs" / "operations.md").read_text())
    commands = {name: command_of(service) for name, service in services.items() if "command" in service}

    assert set(APP_SERVICES) | {"tigerbeetle", "tigerbeetle-format", "redis"} <= set(commands)
    undocumented = {name: command for name, command in commands.items() if command not in documented}
    assert not undocumented, f"commands in compose.yaml that docs/operations.md does not document: {undocumented}"


def test_the_process_table_of_operations_is_what_compose_runs(services: dict[str, Any]) -> None:
    # given the process table's rows (web, worker, beat, migrate)
    table = {}
    for line in (ROOT / "docs" / "operations.md").read_text().splitlines():
        row = re.match(r"\| (web|worker|beat|migrate)\b[^|]* \| `([^`]+)` \|", line)
        if row:
            table[row.group(1)] = row.group(2)
    # then compose runs exactly those, on the project's own image
    assert set(table) == set(APP_SERVICES)
    for name in APP_SERVICES:
        assert command_of(services[name]) == table[name], name
        assert services[name]["build"] == "." and services[name]["image"] == services["web"]["image"]


def test_restart_policies_and_health_checks(services: dict[str, Any]) -> None:
    for name in LONG_RUNNING:
        assert services[name]["restart"] in ("unless-stopped", "always"), name
    for name in ONE_OFF:
        assert services[name]["restart"] == "no", name

    assert "/readyz" in " ".join(services["web"]["healthcheck"]["test"])
    assert services["postgres"]["healthcheck"]["test"][1:2] == ["pg_isready"]
    assert services["redis"]["healthcheck"]["test"][1:] == ["redis-cli", "ping"]
    # the app starts once its database and broker answer and the migrations succeeded
    for name in ("web", "worker", "beat"):
        needs = services[name]["depends_on"]
        assert needs["postgres"]["condition"] == needs["redis"]["condition"] == "service_healthy", name
        assert needs["migrate"]["condition"] == "service_completed_successfully", name
    assert services["tigerbeetle"]["depends_on"]["tigerbeetle-format"]["condition"] == "service_completed_successfully"


def test_beat_runs_exactly_once_and_keeps_its_schedule(services: dict[str, Any]) -> None:
    beat = services["beat"]
    assert beat.get("deploy", {}).get("replicas", 1) == 1
    assert "scale" not in beat
    assert any(volume.endswith(":/var/lib/tollgate") for volume in beat["volumes"])
    assert "TOLLGATE_DATA_DIR=/var/lib/tollgate" in (ROOT / "Dockerfile").read_text().replace(" \\\n", "")


def test_tigerbeetle_is_the_official_image_of_the_client_release_at_an_ip_address(services: dict[str, Any]) -> None:
    pinned = re.search(r"^tigerbeetle==(\S+)$", (ROOT / "requirements.lock").read_text(), flags=re.M)
    assert pinned is not None
    for name in ("tigerbeetle", "tigerbeetle-format"):
        assert services[name]["image"] == f"ghcr.io/tigerbeetle/tigerbeetle:{pinned.group(1)}"
    assert "format --cluster=0 --replica=0 --replica-count=1" in command_of(services["tigerbeetle-format"])

    # the client refuses host names: the app is given the replica's fixed address on the compose network
    address = services["web"]["environment"]["TIGERBEETLE_ADDRESSES"]
    host, _, port = address.rpartition(":")
    fixed = services["tigerbeetle"]["networks"]["tollgate"]["ipv4_address"]
    assert ipaddress.ip_address(host) == ipaddress.ip_address(fixed) and port == "3000"
    subnet = yaml.safe_load((ROOT / "compose.yaml").read_text())["networks"]["tollgate"]["ipam"]["config"][0]["subnet"]
    assert ipaddress.ip_address(fixed) in ipaddress.ip_network(subnet)
    assert "--addresses=0.0.0.0:3000" in services["tigerbeetle"]["command"]


def test_the_dockerfile_runs_a_command_of_this_repo_as_a_non_root_user(services: dict[str, Any]) -> None:
    instructions = dockerfile_instructions()
    keywords = [keyword for keyword, _ in instructions]
    base = dict(instructions)["FROM"]
    assert re.fullmatch(r"python:3\.\d+-slim", base), base

    user = [rest for keyword, rest in instructions if keyword == "USER"][-1]
    assert user.split(":")[0] not in ("root", "0"), user
    assert keywords.index("USER") > max(i for i, k in enumerate(keywords) if k == "RUN")  # nothing runs as root after
    assert re.search(rf"useradd\b.*--uid {user.split(':')[0]}\b", (ROOT / "Dockerfile").read_text().replace("\\\n", ""))

    assert "ENTRYPOINT" not in keywords  # the command alone picks the process
    cmd = json.loads(dict(instructions)["CMD"])
    assert cmd == services["web"]["command"]
    program, app = cmd[0], cmd[1]
    assert any(re.match(rf"{program}\b", dep) for dep in runtime_dependencies()), program
    module, _, attribute = app.partition(":")
    assert (ROOT / Path(*module.split("."))).with_suffix(".py").is_file(), app
    assert attribute in ("", "application")

    for keyword, rest in instructions:
        if keyword == "COPY":
            *sources, _dest = shlex.split(rest)
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"


def test_the_image_pins_its_runtime_dependencies_from_the_lock_file() -> None:
    """The Dockerfile installs pyproject's dependencies constrained by requirements.lock: each must be pinned."""
    locked = {line.split("==")[0].lower() for line in (ROOT / "requirements.lock").read_text().splitlines()
              if "==" in line and not line.startswith("#")}
    for dependency in runtime_dependencies():
        name = re.match(r"[A-Za-z0-9_.-]+", dependency).group(0).lower()  # type: ignore[union-attr]
        assert name.replace("_", "-") in locked, dependency
    assert "-c requirements.lock" in (ROOT / "Dockerfile").read_text()


def test_the_license_is_the_apache_license_pyproject_declares() -> None:
    license_text = (ROOT / "LICENSE").read_text()
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"] == {"text": "Apache-2.0"}
    assert "Apache License\n                           Version 2.0, January 2004" in license_text
    assert "END OF TERMS AND CONDITIONS" in license_text
    assert len(re.findall(r"^\s+\d+\. [A-Z]", license_text, flags=re.M)) >= 9  # all nine sections


def test_the_systemd_units_run_the_documented_commands() -> None:
    """deploy.md's units run the process table's commands from the virtualenv (web bound to loopback, for the proxy)."""
    table = {row.group(1) for row in re.finditer(r"^\| (?:web|worker|beat|migrate)\b[^|]* \| `([^`]+)` \|",
                                                  (ROOT / "docs" / "operations.md").read_text(), flags=re.M)}
    deploy = (ROOT / "docs" / "deploy.md").read_text()
    started = re.findall(r"ExecStart=/opt/tollgate/\.venv/bin/([^`\n]+)", deploy)
    assert len(started) == 4
    for command in started:
        assert re.sub(r"-b \S+", "-b 0.0.0.0:8000", command.strip()) in table, command
    assert "ExecStart=/opt/tollgate/.venv/bin/gunicorn portal.wsgi -b 127.0.0.1:8000" in deploy
