"""The override editor's form <-> the body of ``override_put`` (pure, tested): a hard and a soft limit per
meter, the spend cap (the plan's, a cap of its own, or none at all), run limits and anomaly settings.
A blank group is left out of the body, so the plan's terms apply to it. Each problem the service names
by path (``limits[0].hard``, ``run_limits.max_steps``) is shown beside the input it came from."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

RUN_LIMITS = ("max_steps", "max_spend", "max_duration_seconds")
ANOMALY = ("window_minutes", "factor", "min_spend", "action")
CAP_MODES = ("plan", "set", "remove")  # the plan's cap, this customer's own, no cap at all
LIMIT_PATH = re.compile(r"^limits\[(\d+)\]\.?(\w*)")


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


@dataclass
class OverrideForm:
    """The editor's inputs by name (``limit-<meter>-hard``, ``spend_cap``, ``run_limits-max_steps``,
    ``anomaly-factor``...) and the problems found, by input name ("" for the override as a whole)."""

    meters: list[tuple[str, str]]  # (key, name) of every meter, one limits row each
    values: dict[str, str] = field(default_factory=dict)
    errors: dict[str, list[str]] = field(default_factory=dict)
    plan: dict[str, Any] = field(default_factory=dict)  # the plan's terms, shown beside the inputs

    @classmethod
    def from_terms(cls, terms: Mapping[str, Any], meters: list[tuple[str, str]],
                   plan: dict[str, Any] | None = None) -> OverrideForm:
        """Prefilled from the override in force (``override_get``)."""
        values: dict[str, str] = {}
        for limit in terms.get("limits") or []:
            values[f"limit-{limit['meter']}-hard"] = _text(limit.get("hard"))
            values[f"limit-{limit['meter']}-soft"] = _text(limit.get("soft"))
        if "spend_cap" in terms:
            values["spend_cap_mode"] = "remove" if terms["spend_cap"] is None else "set"
            values["spend_cap"] = _text(terms["spend_cap"])
        for group, names in (("run_limits", RUN_LIMITS), ("anomaly", ANOMALY)):
            for name in names:
                values[f"{group}-{name}"] = _text((terms.get(group) or {}).get(name))
        return cls(meters, values, plan=plan or {})

    @classmethod
    def from_post(cls, data: Mapping[str, Any], meters: list[tuple[str, str]],
                  plan: dict[str, Any] | None = None) -> OverrideForm:
        names = [f"limit-{key}-{part}" for key, _ in meters for part in ("hard", "soft")]
        names += ["spend_cap", "spend_cap_mode", *(f"run_limits-{n}" for n in RUN_LIMITS),
                  *(f"anomaly-{n}" for n in ANOMALY)]
        return cls(meters, {n: _text(data.get(n)) for n in names}, plan=plan or {})

    def _limited(self) -> list[str]:
        """The meters whose row is filled in, in the order their limits are sent."""
        return [key for key, _ in self.meters
                if self.values.get(f"limit-{key}-hard") or self.values.get(f"limit-{key}-soft")]

    def data(self) -> dict[str, Any]:
        """The body for ``override_put``: the values as typed (the service parses and validates them)."""
        body: dict[str, Any] = {"limits": []}
        for key in self._limited():
            limit = {"meter": key, "hard": self.values.get(f"limit-{key}-hard") or None}
            if self.values.get(f"limit-{key}-soft"):
                limit["soft"] = self.values[f"limit-{key}-soft"]
            body["limits"].append(limit)
        mode = self.values.get("spend_cap_mode") or "plan"
        if mode == "remove":
            body["spend_cap"] = None
        elif mode == "set":
            body["spend_cap"] = self.values.get("spend_cap", "")
        for group, names in (("run_limits", RUN_LIMITS), ("anomaly", ANOMALY)):
            given = {n: self.values[f"{group}-{n}"] for n in names if self.values.get(f"{group}-{n}")}
            if given:
                body[group] = given
        return body

    def add_errors(self, fields: Mapping[str, Iterable[str]]) -> None:
        """The service's problems (by path) on the inputs they came from."""
        limited = self._limited()
        for path, messages in fields.items():
            name = ""
            match = LIMIT_PATH.match(path)
            if match and int(match.group(1)) < len(limited):
                part = match.group(2) if match.group(2) in ("hard", "soft") else "hard"
                name = f"limit-{limited[int(match.group(1))]}-{part}"
            elif path == "spend_cap":
                name = "spend_cap"
            elif path.split(".", 1)[0] in ("run_limits", "anomaly"):
                name = path.replace(".", "-", 1) if "." in path else path
            self.errors.setdefault(name, []).extend(messages)

    # --- what the template shows ---------------------------------------------------------------------

    @property
    def limit_rows(self) -> list[dict[str, Any]]:
        plan_limits = {limit["meter"]: limit for limit in self.plan.get("limits") or []}
        return [{"meter": key, "name": name, "plan": plan_limits.get(key),
                 "hard": self.values.get(f"limit-{key}-hard", ""), "soft": self.values.get(f"limit-{key}-soft", ""),
                 "hard_errors": self.errors.get(f"limit-{key}-hard", []),
                 "soft_errors": self.errors.get(f"limit-{key}-soft", [])} for key, name in self.meters]

    @property
    def spend_cap(self) -> dict[str, Any]:
        return {"mode": self.values.get("spend_cap_mode") or "plan", "value": self.values.get("spend_cap", ""),
                "plan": self.plan.get("spend_cap"), "errors": self.errors.get("spend_cap", [])}

    def _group(self, group: str, names: tuple[str, ...]) -> dict[str, Any]:
        plan = self.plan.get(group) or {}
        return {"errors": self.errors.get(group, []),
                "fields": [{"name": f"{group}-{n}", "label": n, "value": self.values.get(f"{group}-{n}", ""),
                            "plan": plan.get(n), "errors": self.errors.get(f"{group}-{n}", [])} for n in names]}

    @property
    def run_limits(self) -> dict[str, Any]:
        return self._group("run_limits", RUN_LIMITS)

    @property
    def anomaly(self) -> dict[str, Any]:
        return self._group("anomaly", ANOMALY)

    @property
    def other_errors(self) -> list[str]:
        return self.errors.get("", [])

    def _labels(self) -> dict[str, str]:
        """Each input (and group) of the editor by name, in page order, with the label the summary links by."""
        labels: dict[str, str] = {}
        for key, _ in self.meters:
            labels[f"limit-{key}-hard"] = f"Hard limit of {key}"
            labels[f"limit-{key}-soft"] = f"Soft limit of {key}"
        labels["spend_cap"] = "Spend cap"
        for group, title, names in (("run_limits", "Run limits", RUN_LIMITS), ("anomaly", "Anomaly detection", ANOMALY)):
            labels[group] = title
            labels.update({f"{group}-{n}": f"{title}: {n}" for n in names})
        return labels

    @property
    def summary(self) -> list[dict[str, str]]:
        """The problems listed once above the form: a link (``anchor``, ``label``) to each input with a
        problem, whose message is beside it; a problem of no input (``message``) is said here only."""
        labels = self._labels()
        items = [{"message": m} for m in self.other_errors]
        items += [{"anchor": f"override-{name}", "label": label} for name, label in labels.items() if self.errors.get(name)]
        items += [{"message": m} for name, messages in self.errors.items() if name and name not in labels for m in messages]
        return items
