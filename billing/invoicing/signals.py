"""Signals other apps subscribe to (payments pushes finalized invoices to Stripe). Sent after commit."""

from django.dispatch import Signal

# sender=Invoice, invoice_id=int; sent once the transaction that finalized the invoice has committed
invoice_finalized = Signal()
# sender=Invoice, invoice_id=int, status=str; sent after paid/void/uncollectible commit
invoice_status_changed = Signal()
