"""The console's set-up forms. They parse only: the rules (an id's shape, a unique username, a password's
strength, a plan change that rewrites no closed period) are the services', so the console and the API
answer alike. ``apply_error`` puts a service's refusal beside the input it names."""

from __future__ import annotations

import json
import secrets
from typing import Any

from django import forms
from django.core.exceptions import ValidationError as DjangoValidationError

from billing.catalog import money
from billing.common.errors import DomainError
from billing.customers.models import ApiKey, external_id_validator


def is_htmx(request: Any) -> bool:
    return bool(request.headers.get("HX-Request") == "true")  # what django-htmx's request.htmx reads


def apply_error(form: forms.Form, exc: DomainError | DjangoValidationError, names: dict[str, str] | None = None) -> None:
    """Each of the service's fields on the input it came from (``names`` maps the service's names to the
    form's), the rest on the form itself (shown once, in the summary above it)."""
    names = names or {}
    if isinstance(exc, DomainError):
        fields = exc.fields or {"": [exc.message]}
    else:
        fields = exc.message_dict if hasattr(exc, "error_dict") else {"": exc.messages}
    for name, messages in fields.items():
        field = names.get(name, name)
        form.add_error(field if field in form.fields else None, list(messages))


class ConsoleForm(forms.Form):
    """Ids prefixed by the form's section (``details-name``): one page holds several forms with a ``name``."""

    section = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("auto_id", f"{self.section}-%s")
        super().__init__(*args, **kwargs)


class CustomerForm(ConsoleForm):
    section = "customer"
    external_id = forms.CharField(max_length=128, label="Customer id", validators=[external_id_validator],
                                  help_text="Your own id for the customer, used by the API; it never changes.")
    name = forms.CharField(max_length=200, label="Name")
    email = forms.EmailField(required=False, label="Contact email", help_text="Where alerts are sent.")
    invoice_email = forms.EmailField(required=False, label="Invoice contact email",
                                     help_text="Where finalized invoices are sent (blank: the contact email).")
    billing_address = forms.CharField(required=False, label="Billing address", widget=forms.Textarea(attrs={"rows": 3}),
                                      help_text="Printed on its invoices as given.")
    tax_id = forms.CharField(max_length=64, required=False, label="Tax id", help_text="A VAT or GST number, say.")
    tax_rate = forms.DecimalField(required=False, max_digits=6, decimal_places=3, min_value=0, max_value=100,
                                  label="Tax rate (%)",
                                  help_text="Blank: its plan's rate, else the operator's default rate.")
    tax_reverse_charge = forms.BooleanField(required=False, label="Reverse charge (no tax on its invoices)")
    metadata = forms.CharField(required=False, label="Metadata (JSON object)", widget=forms.Textarea(attrs={"rows": 3}),
                               help_text='For your own use, e.g. {"crm_id": "42"}.')

    BILLING = ("billing_address", "tax_id", "invoice_email", "tax_rate", "tax_reverse_charge")

    def __init__(self, *args: Any, editing: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if editing:  # the id is immutable: shown, not posted
            del self.fields["external_id"]

    def clean_metadata(self) -> dict[str, Any]:
        text = self.cleaned_data["metadata"].strip()
        if not text:
            return {}
        try:
            value = json.loads(text)
        except ValueError:
            raise forms.ValidationError("Not valid JSON.") from None
        if not isinstance(value, dict):
            raise forms.ValidationError('A JSON object, e.g. {"crm_id": "42"}.')
        return value

    @staticmethod
    def initial_of(customer: Any) -> dict[str, Any]:
        return {"name": customer.name, "email": customer.email,
                "metadata": json.dumps(customer.metadata, indent=1) if customer.metadata else "",
                **{name: getattr(customer, name) for name in CustomerForm.BILLING}}

    def billing(self) -> dict[str, Any]:
        return {name: self.cleaned_data[name] for name in self.BILLING}


class ProjectForm(ConsoleForm):
    section = "project"
    key = forms.CharField(max_length=128, label="Project key", help_text="Events name it in their project field.")
    name = forms.CharField(max_length=200, required=False, label="Name")


class DashboardUserForm(ConsoleForm):
    section = "user"
    username = forms.CharField(max_length=150, label="Username", help_text="The login, unique across Tollgate.")
    email = forms.EmailField(required=False, label="Email")
    password = forms.CharField(widget=forms.PasswordInput(render_value=False), label="Password",
                               help_text="Tell it to the user yourself; they cannot change it yet.")


class PasswordForm(ConsoleForm):
    section = "password"
    password = forms.CharField(widget=forms.PasswordInput(render_value=False), label="New password")


class ApiKeyForm(ConsoleForm):
    section = "key"
    name = forms.CharField(max_length=200, label="Key name", help_text="What the key is for (an app, an environment).")
    scope = forms.ChoiceField(choices=ApiKey.Scope.choices, label="Scope", initial=ApiKey.Scope.INGEST)


class SubscriptionForm(ConsoleForm):
    section = "subscription"
    WHEN = [("next_period", "at the start of the next period (now when it has no plan)"), ("now", "now"),
            ("date", "on this date (UTC)")]

    plan = forms.ChoiceField(label="Plan")
    when = forms.ChoiceField(choices=WHEN, label="Takes effect", initial="next_period", widget=forms.RadioSelect)
    start = forms.DateTimeField(required=False, label="Start (UTC)", input_formats=["%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M",
                                                                                      "%Y-%m-%d"],
                                widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"))

    def __init__(self, *args: Any, plans: list[tuple[str, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["plan"].choices = plans  # type: ignore[attr-defined]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("when") == "date" and not data.get("start") and "start" not in self.errors:
            self.add_error("start", "Give the date and time the new plan starts.")
        return data


class CancelForm(ConsoleForm):
    section = "cancel"
    WHEN = [("period_end", "at the end of the current period"), ("date", "on this date (UTC)")]

    when = forms.ChoiceField(choices=WHEN, label="Ends", initial="period_end", widget=forms.RadioSelect)
    end = forms.DateTimeField(required=False, label="End (UTC)", input_formats=["%Y-%m-%dT%H:%M", "%Y-%m-%d"],
                              widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"))

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("when") == "date" and not data.get("end") and "end" not in self.errors:
            self.add_error("end", "Give the date and time the plan ends.")
        return data


class CreditGrantForm(ConsoleForm):
    section = "grant"
    amount = forms.DecimalField(label="Amount", help_text="Prepaid credit, in the currency below.")
    currency = forms.CharField(max_length=3, label="Currency")
    reason = forms.CharField(max_length=200, required=False, label="Reason")
    # one per form shown: a double submit or a retried request grants once
    idempotency_key = forms.CharField(max_length=128, widget=forms.HiddenInput)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("initial", {})
        kwargs["initial"].setdefault("idempotency_key", f"console-{secrets.token_hex(12)}")
        super().__init__(*args, **kwargs)

    def clean_currency(self) -> str:
        code = self.cleaned_data["currency"].strip().upper()
        if not money.is_currency(code):
            raise forms.ValidationError(f"Unsupported currency '{code}'.")
        return code


class VoidForm(ConsoleForm):
    section = "void"
    reason = forms.CharField(max_length=200, required=False, label="Reason")
