from django.apps import AppConfig


class PaymentsConfig(AppConfig):
    name = "billing.payments"
    label = "payments"
    verbose_name = "Payments (Stripe, Paystack)"

    def ready(self) -> None:
        from billing.payments import receivers  # noqa: F401  (connects customers and invoicing signals)
