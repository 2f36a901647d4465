from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth.password_validation import validate_password

from billing.common.errors import DomainError


class ContactEmailForm(forms.Form):
    email = forms.EmailField(label="Invoice contact email", max_length=254)


class UserAddForm(forms.Form):
    username = forms.RegexField(regex=r"^[\w.+-]{3,150}$", max_length=150, label="Login name",
                                help_text="They log in as <name>@<this customer's id>.",
                                error_messages={"invalid": "3-150 letters, digits and . + - _"})
    email = forms.EmailField(required=False)
    password = forms.CharField(widget=forms.PasswordInput, min_length=8,
                               help_text="At least 8 characters; tell it to the new user yourself.")

    def clean_password(self) -> str:
        password: str = self.cleaned_data["password"]
        validate_password(password)
        return password


class ThresholdAddForm(forms.Form):
    """Parses only; the rules (an existing meter or the spend cap, above 0 and at most 100, two decimals at
    most, 20 per customer) are the guardrails service's, so the page and the API answer alike."""

    target = forms.CharField(max_length=80, label="Watch")
    percent = forms.DecimalField(label="At percent of the limit",
                                 widget=forms.NumberInput(attrs={"min": "0.01", "max": "100", "step": "0.01"}))


class PauseForm(forms.Form):
    """Parses only: the scope, the project and the reason's rules are the pauses service's."""

    scope = forms.ChoiceField(choices=[("customer", "All usage"), ("project", "One project")],
                              widget=forms.HiddenInput)
    project = forms.CharField(max_length=128, required=False)
    reason = forms.CharField(max_length=200, help_text="Why: shown beside the pause, and in the audit trail.")


class BudgetForm(forms.Form):
    """A budget's fields as the API takes them, its scope as separate inputs (any of a project, one
    dimension value, an API key); parses only, the budgets service validates (the page and the API
    answer alike)."""

    budget_id = forms.CharField(max_length=128, label="Budget id")
    project = forms.CharField(max_length=128, required=False)
    dimension_key = forms.CharField(max_length=64, required=False, initial="end_user", label="Dimension")
    dimension_value = forms.CharField(max_length=200, required=False, label="Value")
    api_key = forms.CharField(max_length=16, required=False, label="API key")
    amount = forms.CharField(max_length=60)
    period = forms.ChoiceField(choices=[("month", "per month"), ("day", "per day (UTC)")])
    action = forms.ChoiceField(choices=[("block", "block (402 budget_exceeded)"), ("alert", "alert only")])
    soft = forms.CharField(max_length=12, required=False, label="Alert at %",
                           help_text="80% when left empty.")

    # the service's field names -> this form's
    FIELDS = {"scope.project": "project", "scope.dimension": "dimension_value", "scope.api_key": "api_key"}

    def service_kwargs(self) -> dict[str, Any]:
        data = self.cleaned_data
        scope: dict[str, Any] = {}
        if data["project"]:
            scope["project"] = data["project"]
        if data["dimension_value"] or (data["dimension_key"] and data["dimension_key"] != "end_user"):
            scope["dimension"] = {data["dimension_key"]: data["dimension_value"]}
        if data["api_key"]:
            scope["api_key"] = data["api_key"]
        soft = data["soft"].strip()
        return {"budget_id": data["budget_id"], "scope": scope, "amount": data["amount"].strip(),
                "period": data["period"], "action": data["action"],
                "soft": (soft if soft.endswith("%") else f"{soft}%") if soft else None}


def add_domain_errors(form: forms.Form, exc: DomainError, names: dict[str, str] | None = None,
                      fallback: str | None = None) -> None:
    """Show a service's error on the form: each of its fields next to the input it came from (``names``
    maps the service's field names to the form's), anything else above the form (or on ``fallback``)."""
    names = names or {}
    for name, messages in (exc.fields or {fallback or "": [exc.message]}).items():
        field = names.get(name, name)
        form.add_error(field if field in form.fields else None, messages)


class GatewayKeyForm(forms.Form):
    name = forms.CharField(max_length=200, label="Name", help_text="What the key is for (an app, an environment).")
