from django.apps import AppConfig


class GuardrailsConfig(AppConfig):
    name = "billing.guardrails"
    label = "guardrails"
    verbose_name = "Limits, spend caps and credits"
