"""The JSON parser of every DRF-parsed endpoint: DRF's, plus what must never reach the database (a NUL
or a lone surrogate in any string, hostile nesting: billing.common.sane), refused as the contract's
errors instead of a 500 from PostgreSQL or the recursion limit, and a body that is not a JSON object (the
contract's 400 "not the expected shape at all")."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

from billing.common.errors import CommonCode, DomainError, validation_error
from billing.common.sane import NOT_UNICODE, json_problem


class SafeJSONParser(JSONParser):
    def parse(self, stream: Any, media_type: str | None = None, parser_context: Mapping[str, Any] | None = None) -> Any:
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - nested too deeply.") from None
        problem = json_problem(data)
        if problem is not None:
            where, message = problem
            # an escaped lone surrogate (of a key or a value) is not JSON, as msgspec judges it on ingest
            if NOT_UNICODE[8:] in message:
                raise ParseError(f"JSON parse error - a string at {where} is not valid Unicode.")
            raise validation_error({where: [message]})
        if not isinstance(data, dict):  # every body this API takes is an object: anything else is 400, not 422
            raise DomainError(CommonCode.INVALID_SHAPE, "Expected a JSON object.")
        return data
