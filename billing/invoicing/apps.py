from django.apps import AppConfig


class InvoicingConfig(AppConfig):
    name = "billing.invoicing"
    label = "invoicing"
    verbose_name = "Invoices"

    def ready(self) -> None:
        # ingest refuses events of closed periods; usage sits below invoicing, so invoicing tells it how to know
        from billing.catalog import services as catalog_services
        from billing.invoicing import periods
        from billing.usage.ingest import resolve

        resolve.closed_until_source = periods.closed_until_cached
        # and a subscription may not start in a closed period (read fresh: subscriptions change rarely)
        catalog_services.closed_until_source = periods.closed_until
