"""Signals other apps subscribe to (the outbound webhooks). Sent after commit."""

from django.dispatch import Signal

# sender=Alert, alert_ids=list[int]: soft-limit alerts recorded for the first time (each once, whatever
# the number of concurrent checks; a receiver keys on the id)
soft_limit_crossed = Signal()
