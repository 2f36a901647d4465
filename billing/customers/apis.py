"""Customers and projects (contract.md, "Catalog, customers, subscriptions")."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing.common.auth import principal_of
from billing.common.errors import CommonCode, DomainError
from billing.common.openapi import data_list, errors
from billing.customers import selectors, services
from billing.customers.models import Customer, Project


class ProjectOut(serializers.Serializer):
    id = serializers.CharField(source="key")
    name = serializers.CharField()


class CustomerOut(serializers.Serializer):
    id = serializers.CharField(source="external_id")
    name = serializers.CharField()
    email = serializers.CharField(allow_blank=True)
    metadata = serializers.DictField(help_text="the operator's own keys and values")
    billing_address = serializers.CharField(allow_blank=True)
    tax_id = serializers.CharField(allow_blank=True)
    invoice_email = serializers.CharField(allow_blank=True)
    tax_rate = serializers.DecimalField(max_digits=6, decimal_places=3, allow_null=True, coerce_to_string=True)
    tax_reverse_charge = serializers.BooleanField()
    projects = ProjectOut(many=True)
    created_at = serializers.DateTimeField()


def _customer_out(customer: Customer) -> dict:
    return dict(CustomerOut(customer).data)


class CustomersApi(APIView):
    required_scope = {"GET": "read", "POST": "admin"}

    class CustomerCreateInput(serializers.Serializer):
        id = serializers.CharField(max_length=128)
        name = serializers.CharField(max_length=200, required=False, default="")
        email = serializers.EmailField(required=False, default="", allow_blank=True)
        metadata = serializers.DictField(required=False, default=dict)
        billing_address = serializers.CharField(required=False, allow_blank=True, max_length=2000)
        tax_id = serializers.CharField(required=False, allow_blank=True, max_length=64)
        invoice_email = serializers.EmailField(required=False, allow_blank=True)
        tax_rate = serializers.DecimalField(required=False, allow_null=True, max_digits=6, decimal_places=3,
                                            min_value=0, max_value=100)
        tax_reverse_charge = serializers.BooleanField(required=False)

    @extend_schema(responses={200: data_list("CustomerList", CustomerOut())}, operation_id="customers_list")
    def get(self, request: Request) -> Response:
        customers = selectors.customer_list(principal=principal_of(request)).prefetch_related("projects")
        return Response({"data": CustomerOut(customers, many=True).data})

    @extend_schema(request=CustomerCreateInput, responses={201: CustomerOut, **errors(409)},
                   operation_id="customers_create")
    def post(self, request: Request) -> Response:
        if principal_of(request).customer_id is not None:
            raise DomainError(CommonCode.FORBIDDEN, "A key restricted to one customer cannot create customers.")
        data = self.CustomerCreateInput(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        customer = services.customer_create(external_id=v["id"], name=v["name"], email=v["email"], metadata=v["metadata"],
                                            billing={k: v[k] for k in services.BILLING_DETAILS if k in v})
        return Response(_customer_out(customer), status=201)


class CustomerDetailApi(APIView):
    required_scope = {"GET": "read", "PATCH": "admin"}

    class CustomerUpdateInput(serializers.Serializer):
        id = serializers.CharField(required=False)
        name = serializers.CharField(max_length=200, required=False)
        email = serializers.EmailField(required=False, allow_blank=True)
        metadata = serializers.DictField(required=False)
        billing_address = serializers.CharField(required=False, allow_blank=True, max_length=2000)
        tax_id = serializers.CharField(required=False, allow_blank=True, max_length=64)
        invoice_email = serializers.EmailField(required=False, allow_blank=True)
        tax_rate = serializers.DecimalField(required=False, allow_null=True, max_digits=6, decimal_places=3,
                                            min_value=0, max_value=100)
        tax_reverse_charge = serializers.BooleanField(required=False)

    @extend_schema(responses={200: CustomerOut}, operation_id="customers_retrieve")
    def get(self, request: Request, customer_id: str) -> Response:
        return Response(_customer_out(selectors.customer_get(external_id=customer_id, principal=principal_of(request))))

    @extend_schema(request=CustomerUpdateInput, responses={200: CustomerOut}, operation_id="customers_update")
    def patch(self, request: Request, customer_id: str) -> Response:
        customer = selectors.customer_get(external_id=customer_id, principal=principal_of(request))
        data = self.CustomerUpdateInput(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        customer = services.customer_update(customer=customer, data=dict(data.validated_data))
        return Response(_customer_out(customer))


class CustomerProjectsApi(APIView):
    required_scope = {"GET": "read", "POST": "admin"}

    class ProjectCreateInput(serializers.Serializer):
        id = serializers.CharField(max_length=128)
        name = serializers.CharField(max_length=200, required=False, default="")

    @extend_schema(responses={200: data_list("ProjectList", ProjectOut())}, operation_id="projects_list")
    def get(self, request: Request, customer_id: str) -> Response:
        customer = selectors.customer_get(external_id=customer_id, principal=principal_of(request))
        return Response({"data": ProjectOut(selectors.project_list(customer=customer), many=True).data})

    @extend_schema(request=ProjectCreateInput, responses={201: ProjectOut, **errors(409)}, operation_id="projects_create")
    def post(self, request: Request, customer_id: str) -> Response:
        customer = selectors.customer_get(external_id=customer_id, principal=principal_of(request))
        data = self.ProjectCreateInput(data=request.data)
        data.is_valid(raise_exception=True)
        project: Project = services.project_create(customer=customer, key=data.validated_data["id"],
                                                   name=data.validated_data["name"])
        return Response(ProjectOut(project).data, status=201)
