"""Every error code of every app has one HTTP status (``portal.errors.STATUS``), the same one docs/api.md
lists, and the API and the pages answer with it; the domain below the web face knows no HTTP."""

from __future__ import annotations

import ast
import importlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
from django.apps import apps
from rest_framework.renderers import JSONRenderer

from billing.common.errors import CommonCode, DomainError, ErrorCode
from billing.guardrails.errors import GuardrailsCode
from portal.errors import STATUS, DomainErrorMiddleware, api_exception_handler

ROOT = Path(__file__).resolve().parents[2]


def code_enums() -> list[type[ErrorCode]]:
    """The shared codes and each billing app's ``errors`` module's enums."""
    found: list[type[ErrorCode]] = [CommonCode]
    for config in apps.get_app_configs():
        if not config.name.startswith("billing.") or config.name == "billing.common":
            continue
        try:
            module = importlib.import_module(f"{config.name}.errors")
        except ModuleNotFoundError:
            continue
        found += [v for v in vars(module).values()
                  if isinstance(v, type) and issubclass(v, ErrorCode) and v.__module__ == module.__name__]
    return found


def all_codes() -> list[ErrorCode]:
    return [code for enum in code_enums() for code in enum]


def test_every_code_enum_is_in_an_apps_errors_module() -> None:
    # a code enum elsewhere would escape the checks below
    assert set(code_enums()) == set(ErrorCode.__subclasses__())
    assert {e.__name__ for e in code_enums()} >= {"CommonCode", "CatalogCode", "CustomersCode", "UsageCode",
                                                   "InvoicingCode", "GuardrailsCode", "PaymentsCode"}


def test_every_code_has_one_status_and_the_table_holds_nothing_else() -> None:
    codes = all_codes()
    values = [str(code) for code in codes]
    assert len(values) == len(set(values)), "a code value is defined twice"
    assert all(re.fullmatch(r"[a-z]+(_[a-z]+)*", value) for value in values)
    missing = [value for code, value in zip(codes, values, strict=True) if code not in STATUS]
    assert missing == []
    assert set(STATUS) == set(codes)
    assert all(400 <= status <= 599 for status in STATUS.values())


def documented_statuses() -> dict[str, int]:
    """docs/api.md's error table: ``| status | `code`, `code` | when |``, row by row."""
    text = (ROOT / "docs" / "api.md").read_text()
    section = text.split("\n## Errors\n", 1)[1].split("\n## ", 1)[0]
    out: dict[str, int] = {}
    for line in section.splitlines():
        row = re.match(r"\| (\d{3}) \| ([^|]+) \|", line)
        if row:
            for code in re.findall(r"`([a-z_]+)`", row.group(2)):
                assert code not in out, f"{code} is listed twice"
                out[code] = int(row.group(1))
    return out


def test_the_docs_error_table_names_every_code_with_its_status() -> None:
    assert documented_statuses() == {str(code): status for code, status in STATUS.items()}


# contract.md, "Errors" and "Usage events": the statuses outside code relies on
CONTRACT = {
    "invalid_json": 400, "invalid_shape": 400, "not_authenticated": 401, "invalid_api_key": 401,
    "quota_exceeded": 402, "spend_cap_exceeded": 402, "insufficient_credits": 402, "forbidden": 403,
    "customer_forbidden": 403, "not_found": 404, "idempotency_conflict": 409, "validation_error": 422,
    "unknown_customer": 422, "unknown_meter": 422, "period_closed": 422, "rate_limited": 429,
}


def test_the_contracts_statuses_are_pinned() -> None:
    assert {code: STATUS[code] for code in CONTRACT} == CONTRACT  # type: ignore[index]


@pytest.mark.parametrize("code", all_codes(), ids=str)
def test_the_api_answers_each_code_with_its_status_and_the_error_body(code: ErrorCode) -> None:
    response = api_exception_handler(DomainError(code, "Something is wrong."), {})
    assert response is not None
    assert response.status_code == STATUS[code]
    assert response.data == {"error": {"code": str(code), "message": "Something is wrong."}}


def test_the_error_body_keeps_its_key_order_byte_for_byte() -> None:
    error = DomainError(GuardrailsCode.QUOTA_EXCEEDED, "Over the limit.", {"quantity": ["Too much."]},
                        extra={"remaining": "0", "unit": "token"})
    response = api_exception_handler(error, {})
    assert response is not None and response.status_code == 402
    assert JSONRenderer().render(response.data) == (
        b'{"error":{"code":"quota_exceeded","message":"Over the limit.","fields":{"quantity":["Too much."]},'
        b'"remaining":"0","unit":"token"}}')
    assert "Retry-After" not in response


def test_a_page_answers_a_domain_error_with_its_status(rf: Any) -> None:
    middleware = DomainErrorMiddleware(lambda request: None)  # type: ignore[arg-type,return-value]
    page = middleware.process_exception(rf.get("/dashboard/acme-co/"),
                                        DomainError(CommonCode.NOT_FOUND, "No such threshold of this customer."))
    assert page is not None and page.status_code == 404
    assert b"No such threshold of this customer." in page.content and page["Content-Type"].startswith("text/html")
    away = middleware.process_exception(rf.get("/dashboard/acme-co/"), DomainError(CommonCode.LEDGER_UNAVAILABLE, "x"))
    assert away is not None and away.status_code == 503 and away["Retry-After"] == "1"
    assert middleware.process_exception(rf.get("/api/v1/meters"), DomainError(CommonCode.NOT_FOUND, "x")) is None
    assert middleware.process_exception(rf.get("/dashboard/"), ValueError("not ours")) is None


def test_a_json_request_outside_the_api_gets_the_json_body(rf: Any) -> None:
    middleware = DomainErrorMiddleware(lambda request: None)  # type: ignore[arg-type,return-value]
    request = rf.post("/webhooks/stripe", data=b"{}", content_type="application/json")
    answer = middleware.process_exception(request, DomainError(CommonCode.INVALID_SHAPE, "Expected a JSON object."))
    assert answer is not None and answer.status_code == 400
    assert json.loads(answer.content) == {"error": {"code": "invalid_shape", "message": "Expected a JSON object."}}


# The web face: DRF views, Django views and the admin; billing.common.auth is DRF's authentication class.
# authentication: DRF's authenticator classes; openapi: the schema's descriptions of the API's bodies
WEB_MODULES = {"apis", "views", "admin", "authentication", "openapi"}
HTTP_PACKAGES = ("rest_framework", "django.http", "portal")


def test_the_domain_imports_nothing_of_http() -> None:
    offenders = []
    for path in sorted((ROOT / "billing").rglob("*.py")):
        relative = path.relative_to(ROOT)
        if WEB_MODULES & {part.removesuffix(".py") for part in relative.parts} or relative.parts[-2:] == (
                "common", "auth.py") or "migrations" in relative.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{relative}: {name}" for name in names
                          if any(name == p or name.startswith(p + ".") for p in HTTP_PACKAGES)]
    assert offenders == []
