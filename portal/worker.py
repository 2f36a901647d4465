"""The Celery worker's consumer (``CELERY_WORKER_CONSUMER``): Celery's own, made to survive losing a Redis
broker while it holds unacknowledged messages (a task queued with a countdown, an ``acks_late`` task).

Why: on a lost connection Celery 5.7's consumer first ``collect()``s the connection, which closes its
default channel and then drops the transport, and then ``close()``s the same connection again. Closing the
channel the second time asks Redis to restore the unacknowledged messages through a transport that is gone:
``AttributeError: 'NoneType' object has no attribute 'hostname'``, which is not a connection error, so the
worker stops for good ("Unrecoverable error"). Celery up to 5.6 only collected. Here the channel that
``collect()`` closed is forgotten, so the second close has nothing left to close and the consumer reconnects
as it should. The unacknowledged messages stay in Redis and come back after the visibility timeout
(docs/operations.md, "Worker and broker outages").
"""

from __future__ import annotations

from typing import Any

from celery.worker.consumer import Consumer as CeleryConsumer


class Consumer(CeleryConsumer):
    def on_connection_error_after_connected(self, exc: Exception) -> None:
        connection = self.connection
        if connection is not None:
            collect = connection.collect

            def collect_then_forget_the_channel(*args: Any, **kwargs: Any) -> Any:
                try:
                    return collect(*args, **kwargs)
                finally:
                    connection._default_channel = None  # closed with its transport: never closed again without it

            connection.collect = collect_then_forget_the_channel
        super().on_connection_error_after_connected(exc)
