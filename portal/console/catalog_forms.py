"""Forms of the console's catalog pages: a meter, a new plan. They parse and label; services decide."""

from __future__ import annotations

from django import forms

from billing.catalog.models import Meter

AGGREGATIONS = [
    ("sum", "Sum: adds the quantities of the period"),
    ("count", "Count: counts events (a quantity counts as that many)"),
    ("max", "Maximum: the largest quantity of the period"),
    ("unique_count", "Unique count: distinct values of one dimension"),
    ("latest", "Latest: the quantity of the newest event"),
]


class MeterForm(forms.Form):
    key = forms.CharField(max_length=64, label="Key", help_text="What events name: lowercase letters, digits, '_', '.', '-'.")
    name = forms.CharField(max_length=200, label="Name", required=False)
    aggregation = forms.ChoiceField(choices=AGGREGATIONS, label="How a period's events add up")
    unit = forms.CharField(max_length=32, label="Unit", initial="unit", required=False,
                           help_text="Shown on invoices: token, request, GB...")
    unique_by = forms.CharField(max_length=64, label="Dimension counted (unique count only)", required=False,
                                help_text="The event dimension whose distinct values are counted, e.g. user_id.")

    def clean(self) -> dict[str, str]:
        data = super().clean() or {}
        if data.get("aggregation") == Meter.Aggregation.UNIQUE_COUNT and not data.get("unique_by"):
            self.add_error("unique_by", "Required for a unique count: name the dimension to count.")
        return data


class MeterEditForm(MeterForm):
    """The same fields without the key (a meter's key never changes)."""

    def __init__(self, *args: object, frozen: tuple[str, ...] = (), **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        del self.fields["key"]
        for name in frozen:
            self.fields[name].help_text = "Fixed: the meter has usage events (create a new meter to change it)."
            self.fields[name].widget.attrs["readonly"] = "readonly"


class PlanForm(forms.Form):
    key = forms.CharField(max_length=64, label="Key", help_text="How the API and subscriptions name the plan.")
    name = forms.CharField(max_length=200, label="Name")
    currency = forms.CharField(max_length=3, label="Currency (ISO code)", initial="USD")

    def clean_currency(self) -> str:
        return str(self.cleaned_data["currency"]).strip().upper()
