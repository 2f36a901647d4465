from django.apps import AppConfig


class AuditConfig(AppConfig):
    name = "billing.audit"
    label = "audit"
    verbose_name = "Audit log"

    def ready(self) -> None:
        from celery.signals import task_postrun, task_prerun

        from billing.audit.context import job_finished, job_started

        task_prerun.connect(job_started, weak=False, dispatch_uid="audit.job_started")
        task_postrun.connect(job_finished, weak=False, dispatch_uid="audit.job_finished")
