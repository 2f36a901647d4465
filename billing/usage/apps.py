from django.apps import AppConfig


class UsageConfig(AppConfig):
    name = "billing.usage"
    label = "usage"
    verbose_name = "Usage events"

    def ready(self) -> None:
        # a meter's definition freezes once it has events; the catalog sits below usage, so usage tells it
        from billing.catalog import services
        from billing.usage.selectors import meter_has_events

        services.meter_events_source = meter_has_events
