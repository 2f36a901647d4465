from django.apps import AppConfig


class AuditConfig(AppConfig):
    name = "billing.audit"
    label = "audit"
    verbose_name = "Audit log"
