"""The audit log: who changed what, when, with the object's state before and after, written in the
transaction of the change. Every app above writes it through ``audit_record`` (services.py)."""
