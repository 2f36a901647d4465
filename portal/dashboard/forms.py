from __future__ import annotations

from django import forms
from django.contrib.auth.password_validation import validate_password


class ContactEmailForm(forms.Form):
    email = forms.EmailField(label="Invoice contact email", max_length=254)


class UserAddForm(forms.Form):
    username = forms.RegexField(regex=r"^[\w.@+-]{3,150}$", max_length=150,
                                error_messages={"invalid": "3-150 letters, digits and @ . + - _"})
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
