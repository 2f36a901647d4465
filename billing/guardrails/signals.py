"""Signals other apps subscribe to (the outbound webhooks). Sent after commit."""

from django.dispatch import Signal

# sender=Alert, alert_ids=list[int]: soft-limit alerts recorded for the first time (each once, whatever
# the number of concurrent checks; a receiver keys on the id)
soft_limit_crossed = Signal()

# sender=Pause, pause_id=int (the row's pk): a pause was made
customer_paused = Signal()

# sender=Run, customer_id=int, run_id=str, breaker=str: a run's circuit breaker tripped
circuit_tripped = Signal()

# sender=Run, customer_id=int, run_id=str: a run was killed
run_killed = Signal()

# A budget's soft threshold is a soft-limit alert (``soft_limit_crossed``) whose target starts with "budget:"

# sender=Anomaly, anomaly_pk=int: an anomaly was opened (once per anomaly)
anomaly_opened = Signal()

# sender=Anomaly, anomaly_pk=int: an anomaly was resolved (once per anomaly)
anomaly_resolved = Signal()
