"""The schema class of every API view (``DEFAULT_SCHEMA_CLASS``): drf-spectacular's, plus the error answers
every operation shares, so that the schema lists each status the API can answer (docs/api.md, "Errors").

Each view documents its success bodies and its own errors (``billing.common.openapi.errors``); added here,
with the contract's error body: 400 (a NUL in the path, query or headers; a body that is not JSON), 401,
403, 429 and 503 everywhere, 404 where the path or ``?customer=`` names an object, 413 and 422 where a body
is sent (415 where DRF parses it), and 422 where a query is read."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiParameter

from billing.common.openapi import error_response

SHARED = (400, 401, 403, 429, 503)
# an example for each path parameter the docs' own examples use (docs/api.md): Swagger's "Try it out" and the
# schema fuzzer start from a customer, plan, reservation, run and budget that the examples create
PATH_EXAMPLES = {"customer_id": "acme-co", "plan_key": "pro", "reservation_id": "res-1", "run_id": "run-7",
                 "budget_id": "chatbot-monthly"}
BODY_METHODS = ("POST", "PUT", "PATCH")


class TollgateAutoSchema(AutoSchema):
    def _resolve_path_parameters(self, variables: list[str]) -> list[dict[str, Any]]:
        parameters = super()._resolve_path_parameters(variables)
        for parameter in parameters:
            if parameter["name"] in PATH_EXAMPLES:
                parameter["example"] = PATH_EXAMPLES[parameter["name"]]
        return parameters

    def _get_response_bodies(self, direction: Any = "response") -> Any:
        # extend_schema subclasses this class to return each view's own responses: they are added to here
        responses = super()._get_response_bodies(direction)
        added = list(SHARED)
        if "{" in self.path or any(
                isinstance(p, OpenApiParameter) and p.name == "customer" for p in self.get_override_parameters()):
            added.append(404)  # the object named, or the customer of ?customer=, is not this caller's
        if self.method in BODY_METHODS:
            added += [413, 422] if getattr(self.view, "reads_raw_body", False) else [413, 415, 422]
        elif self.get_override_parameters():
            added.append(422)
        for status in added:
            if str(status) not in responses:
                responses[str(status)] = self._get_response_for_code(error_response(status), str(status), None, direction)
        return dict(sorted(responses.items()))


def date_examples_now(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """Postprocessing hook: the request examples' event timestamps become a minute ago, when the schema is
    served. An event example dated once and for all would one day fall in a closed period (422); dated now,
    Swagger's "Try it out" sends an event the API accepts."""
    stamp = (datetime.now(timezone.utc) - timedelta(minutes=1)).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    for operations in result.get("paths", {}).values():
        for operation in operations.values():
            for media in operation.get("requestBody", {}).get("content", {}).values():
                for example in media.get("examples", {}).values():
                    _restamp(example.get("value"), stamp)
    return result


def _restamp(value: Any, stamp: str) -> None:
    if isinstance(value, dict):
        if "timestamp" in value:
            value["timestamp"] = stamp
        for inner in value.values():
            _restamp(inner, stamp)
    elif isinstance(value, list):
        for inner in value:
            _restamp(inner, stamp)
