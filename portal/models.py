from django.db import models


class Heartbeat(models.Model):
    """One row per periodic source (``beat``): when a worker last ran the heartbeat task."""

    name = models.CharField(max_length=64, unique=True)
    seen_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.name} @ {self.seen_at:%Y-%m-%d %H:%M:%S}"
