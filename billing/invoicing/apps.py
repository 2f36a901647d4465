from django.apps import AppConfig


class InvoicingConfig(AppConfig):
    name = "billing.invoicing"
    label = "invoicing"
    verbose_name = "Invoices"
