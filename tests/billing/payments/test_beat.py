"""The beat entries of the Stripe integration name tasks the worker knows."""

from __future__ import annotations

from portal.celery import app


def test_the_payment_beat_entries_name_registered_tasks():
    app.loader.import_default_modules()
    schedule = app.conf.beat_schedule
    assert schedule["payments-sync-pending"] == {"task": "payments.sync_pending", "schedule": 300.0}
    assert schedule["payments-meter-usage"] == {"task": "payments.meter_usage_report", "schedule": 600.0}
    assert schedule["payments-reconcile"] == {"task": "payments.reconcile", "schedule": 86400.0}
    for name in ("payments.sync_pending", "payments.meter_usage_report", "payments.customer_sync",
                 "payments.invoice_push", "payments.event_process", "payments.reconcile", "payments.meter_report_push",
                 "payments.paystack_link", "payments.paystack_event_process"):
        assert name in app.tasks, name
