from __future__ import annotations

from django.db import models


class AuditEntry(models.Model):
    """One write by someone or something (append-only): the actor, the object and its state before and
    after (``None`` before a creation and after a deletion). ``actor_label`` keeps the name the actor went
    by then (a username, a job), for reading after the user or key is gone."""

    class ActorType(models.TextChoices):
        USER = "user"
        API_KEY = "api_key"
        SYSTEM = "system"

    at = models.DateTimeField(auto_now_add=True)
    actor_type = models.CharField(max_length=16, choices=ActorType.choices, default=ActorType.SYSTEM)
    actor_id = models.CharField(max_length=150, blank=True, default="")
    actor_label = models.CharField(max_length=150, blank=True, default="")
    action = models.CharField(max_length=64)
    object_type = models.CharField(max_length=64)
    object_id = models.CharField(max_length=200, blank=True, default="")
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["object_type", "object_id", "-id"], name="audit_object"),
            models.Index(fields=["actor_type", "actor_id", "-id"], name="audit_actor"),
            models.Index(fields=["at"], name="audit_at"),
        ]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M} {self.actor} {self.action} {self.object_type}:{self.object_id}"

    @property
    def actor(self) -> str:
        """``type:id`` as the API's ``actor`` filter takes it (``system`` alone for an unnamed job)."""
        return f"{self.actor_type}:{self.actor_id}" if self.actor_id else self.actor_type
