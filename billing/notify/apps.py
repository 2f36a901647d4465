from django.apps import AppConfig


class NotifyConfig(AppConfig):
    name = "billing.notify"
    label = "notify"
    verbose_name = "Webhooks to the operator"

    def ready(self) -> None:
        from billing.notify import receivers  # noqa: F401  (connects the invoicing and guardrails signals)
