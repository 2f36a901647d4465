from django.apps import AppConfig


class PortalConfig(AppConfig):
    name = "portal"
    verbose_name = "Tollgate portal"

    def ready(self) -> None:
        from portal import throttle  # noqa: F401  (connects the login counters to the auth signals)
