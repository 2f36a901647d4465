from celery import shared_task
from django.utils import timezone

from portal.models import Heartbeat


@shared_task(name="portal.tasks.heartbeat")
def heartbeat() -> str:
    now = timezone.now()
    Heartbeat.objects.update_or_create(name="beat", defaults={"seen_at": now})
    return now.isoformat()
