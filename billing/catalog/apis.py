from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing.catalog import selectors, services
from billing.catalog.models import Meter


class MeterOut(serializers.Serializer):
    key = serializers.CharField()
    name = serializers.CharField()
    unit = serializers.CharField()
    aggregation = serializers.CharField()
    unique_by = serializers.CharField(allow_blank=True)


class MetersApi(APIView):
    required_scope = {"GET": ("read", "ingest"), "POST": "admin"}

    class MeterCreateInput(serializers.Serializer):
        key = serializers.CharField(max_length=64)
        name = serializers.CharField(max_length=200, required=False, default="")
        unit = serializers.CharField(max_length=32, required=False, default="unit")
        aggregation = serializers.ChoiceField(choices=Meter.Aggregation.values)
        unique_by = serializers.CharField(max_length=64, required=False, default="", allow_blank=True)

    @extend_schema(responses={200: MeterOut(many=True)}, operation_id="meters_list")
    def get(self, request: Request) -> Response:
        return Response({"data": MeterOut(selectors.meter_list(), many=True).data})

    @extend_schema(request=MeterCreateInput, responses={201: MeterOut, 200: MeterOut}, operation_id="meters_create")
    def post(self, request: Request) -> Response:
        data = self.MeterCreateInput(data=request.data)
        data.is_valid(raise_exception=True)
        meter, created = services.meter_create(**data.validated_data)
        return Response(MeterOut(meter).data, status=201 if created else 200)
