"""Usage-event endpoints: thin, parse and call one service or selector (contract.md, "Usage events")."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import msgspec
from django.conf import settings
from django.http import StreamingHttpResponse
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing.catalog.errors import CatalogCode
from billing.catalog.models import Meter
from billing.common.auth import principal_of
from billing.common.errors import DomainError, validation_error
from billing.common.fields import decimal_to_text
from billing.common.openapi import errors
from billing.common.params import parse_choice, parse_instant, parse_int
from billing.customers.models import Customer
from billing.customers.selectors import customer_get
from billing.guardrails.apis import reservation_for, reservation_out
from billing.guardrails.errors import GuardrailsCode
from billing.guardrails.models import Reservation
from billing.usage import export, selectors
from billing.usage.contract import BatchIn
from billing.usage.envelope import decode_envelope
from billing.usage.models import UsageEvent
from billing.usage.openapi import (
    BATCH_EXAMPLE,
    EVENT_EXAMPLE,
    SETTLE_EXAMPLE,
    EventBatchDoc,
    EventBatchResultDoc,
    EventPageDoc,
    IngestResultDoc,
    SettleDoc,
    SettleResultDoc,
    UsageDoc,
    UsageEventDoc,
)
from billing.usage.services import ACCEPTED, DUPLICATE, events_ingest, reservation_settle


def _event_out(event: UsageEvent) -> dict[str, Any]:
    return {
        "event_id": event.event_id,
        "customer": event.customer.external_id,
        "project": event.project.key if event.project else None,
        "meter": event.meter.key,
        "quantity": str(event.quantity),
        "timestamp": event.timestamp.astimezone(timezone.utc).isoformat().replace("+00:00", "Z"),
        "received_at": event.received_at.astimezone(timezone.utc).isoformat().replace("+00:00", "Z"),
        "dimensions": event.dimensions,
        "trace": event.trace,
        "billable": event.billable,
        "reason": event.reason or None,
        "schema_version": event.schema_version,
        "corrects": event.corrects or None,
    }


class EventsApi(APIView):
    """POST one event (scope ingest); GET the raw events, newest first (scope read or ingest)."""

    required_scope = {"POST": "ingest", "GET": ("read", "ingest")}
    reads_raw_body = True

    @extend_schema(request=UsageEventDoc, examples=[EVENT_EXAMPLE], operation_id="events_create",
                   responses={201: IngestResultDoc, 200: IngestResultDoc, **errors(402, 409)},
                   description="201 for a new event, 200 (`duplicate`) for the same event_id with the same body.")
    def post(self, request: Request) -> Response:
        result = events_ingest(principal=principal_of(request), raw_events=[request.body])[0]
        if result.status == ACCEPTED:
            return Response({"event_id": result.event_id, "status": ACCEPTED}, status=201)
        if result.status == DUPLICATE:
            return Response({"event_id": result.event_id, "status": DUPLICATE}, status=200)
        assert result.error is not None
        raise result.error

    @extend_schema(
        parameters=[*(OpenApiParameter(p, str) for p in ("customer", "meter", "start", "end", "cursor")),
                    OpenApiParameter("limit", int, description="1 to 1000, default 100")],
        responses={200: EventPageDoc},
        operation_id="events_list",
    )
    def get(self, request: Request) -> Response:
        principal = principal_of(request)
        params = request.query_params
        customer_pks: list[int] | None = None
        if params.get("customer"):
            customer_pks = [customer_get(external_id=params["customer"], principal=principal).pk]
        elif principal.customer_id is not None:
            customer_pks = [principal.customer_id]
        meter = None
        if params.get("meter"):
            meter = Meter.objects.filter(key=params["meter"]).first()
            if meter is None:
                raise DomainError(CatalogCode.UNKNOWN_METER, f"No meter '{params['meter']}'.", {"meter": ["Unknown meter."]})
        after_id = None
        if params.get("cursor"):
            after_id = selectors.cursor_decode(params["cursor"])
            if after_id is None:
                raise validation_error({"cursor": ["Invalid cursor."]})
        limit = parse_int("limit", params.get("limit"), 100, 1, 1000)
        events = selectors.events_list(
            customer_pks=customer_pks, meter=meter, start=parse_instant("start", params.get("start")),
            end=parse_instant("end", params.get("end")), after_id=after_id, limit=limit,
        )
        next_cursor = selectors.cursor_encode(events[-1].pk) if len(events) == limit else None
        return Response({"data": [_event_out(e) for e in events], "next_cursor": next_cursor})


class EventBatchApi(APIView):
    required_scope = "ingest"
    reads_raw_body = True

    @extend_schema(
        request=EventBatchDoc, examples=[BATCH_EXAMPLE],
        responses={200: EventBatchResultDoc},
        operation_id="events_batch",
    )
    def post(self, request: Request) -> Response:
        batch = decode_envelope(request.body, BatchIn)
        count = len(batch.events)
        if not 1 <= count <= settings.TOLLGATE_BATCH_MAX:
            raise validation_error({"events": [f"Send 1 to {settings.TOLLGATE_BATCH_MAX} events; got {count}."]})
        results = events_ingest(principal=principal_of(request), raw_events=batch.events)
        counts = {"accepted": 0, "duplicates": 0, "rejected": 0}
        for r in results:
            counts["accepted" if r.status == ACCEPTED else "duplicates" if r.status == DUPLICATE else "rejected"] += 1
        return Response({**counts, "results": [r.as_dict() for r in results]}, status=200)


def _month_start(now: datetime) -> datetime:
    return now.astimezone(timezone.utc).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


@dataclass(frozen=True)
class UsageQuery:
    """The usage endpoints' parameters, parsed once for the JSON and the CSV form."""

    customer: Customer
    start: datetime
    end: datetime
    granularity: str
    meter: Meter | None
    group_by: tuple[str, ...]

    def selector_kwargs(self) -> dict[str, Any]:
        return {"customer": self.customer, "start": self.start, "end": self.end, "granularity": self.granularity,
                "meter": self.meter, "group_by": self.group_by}


def usage_query_parse(request: Request, customer_id: str) -> UsageQuery:
    customer = customer_get(external_id=customer_id, principal=principal_of(request))
    params = request.query_params
    now = datetime.now(timezone.utc)
    start = parse_instant("start", params.get("start")) or _month_start(now)
    end = parse_instant("end", params.get("end")) or selectors.bucket_bounds(now, "month")[1]
    if end <= start:
        raise validation_error({"end": ["Must be after start."]})
    granularity = parse_choice("granularity", params.get("granularity"), selectors.GRANULARITIES, "day")
    meter = None
    if params.get("meter"):
        meter = Meter.objects.filter(key=params["meter"]).first()
        if meter is None:
            raise DomainError(CatalogCode.UNKNOWN_METER, f"No meter '{params['meter']}'.", {"meter": ["Unknown meter."]})
    group_by = tuple(g.strip() for g in params.get("group_by", "").split(",") if g.strip())
    if len(group_by) > 4:
        raise validation_error({"group_by": ["At most 4 groups."]})
    return UsageQuery(customer, start, end, granularity, meter, group_by)


USAGE_PARAMETERS = [OpenApiParameter(p, str) for p in ("start", "end", "meter", "group_by", "granularity")]


class CustomerUsageApi(APIView):
    required_scope = "read"

    @extend_schema(parameters=USAGE_PARAMETERS, responses={200: UsageDoc}, operation_id="customer_usage")
    def get(self, request: Request, customer_id: str) -> Response:
        query = usage_query_parse(request, customer_id)
        data = selectors.usage_aggregate(**query.selector_kwargs())
        for row in data:
            row["start"] = row["start"].isoformat().replace("+00:00", "Z")
            row["end"] = row["end"].isoformat().replace("+00:00", "Z")
            row["quantity"] = decimal_to_text(row["quantity"])
        return Response({"customer": query.customer.external_id, "start": query.start, "end": query.end,
                         "granularity": query.granularity, "data": data})


class CustomerUsageCsvApi(APIView):
    """The usage endpoint as CSV, streamed row by row (billing.usage.export): same scope, same filters."""

    required_scope = "read"

    def perform_content_negotiation(self, request: Request, force: bool = False) -> Any:
        # the body is always CSV; errors are JSON whatever Accept says (a browser or curl asking for text/csv)
        return super().perform_content_negotiation(request, force=True)

    @extend_schema(parameters=USAGE_PARAMETERS, responses={(200, "text/csv"): str}, operation_id="customer_usage_csv")
    def get(self, request: Request, customer_id: str) -> StreamingHttpResponse:
        query = usage_query_parse(request, customer_id)
        response = StreamingHttpResponse(export.usage_csv_lines(**query.selector_kwargs()),
                                         content_type="text/csv; charset=utf-8")
        stamp = f"{query.start:%Y%m%dT%H%MZ}-{query.end:%Y%m%dT%H%MZ}"
        response["Content-Disposition"] = f'attachment; filename="usage-{query.customer.external_id}-{stamp}.csv"'
        response["Cache-Control"] = "no-store"
        return response


# --- reservations: settling ingests the actual usage (creating and releasing them: billing.guardrails.apis) ---
class SettleIn(msgspec.Struct, forbid_unknown_fields=True):
    events: list[msgspec.Raw]
    customer: str | None = None


class ReservationSettleApi(APIView):
    required_scope = "ingest"
    reads_raw_body = True

    @extend_schema(request=SettleDoc, examples=[SETTLE_EXAMPLE], responses={200: SettleResultDoc, **errors(409)},
                   operation_id="reservations_settle")
    def post(self, request: Request, reservation_id: str) -> Response:
        body = decode_envelope(request.body, SettleIn)
        reservation = reservation_for(request, reservation_id, body.customer)
        if reservation.state in (Reservation.State.SETTLED, Reservation.State.RELEASED) and not body.events:
            raise DomainError(GuardrailsCode.RESERVATION_CLOSED, f"This reservation is already {reservation.state}.")
        if len(body.events) > 1000:
            raise validation_error({"events": ["At most 1000 events."]})
        results = reservation_settle(reservation=reservation, principal=principal_of(request),
                                     raw_events=body.events)
        counts = {"accepted": 0, "duplicates": 0, "rejected": 0}
        for r in results:
            counts["accepted" if r.status == "accepted" else "duplicates" if r.status == "duplicate" else "rejected"] += 1
        reservation.refresh_from_db()
        return Response({**reservation_out(reservation), **counts, "results": [r.as_dict() for r in results]})
