from django.apps import AppConfig


class CustomersConfig(AppConfig):
    name = "billing.customers"
    label = "customers"
    verbose_name = "Customers and access"

    def ready(self) -> None:
        import billing.customers.schema  # noqa: F401 - registers the OpenAPI auth extensions
