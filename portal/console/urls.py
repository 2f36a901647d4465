from django.urls import path

from portal.console import anomalies, guardrails, views

app_name = "console"

urlpatterns = [
    path("", views.console_index, name="index"),
    path("audit/", views.audit_trail, name="audit"),
    path("anomalies/", anomalies.anomaly_queue, name="anomalies"),
    path("anomalies/<str:anomaly_id>/", anomalies.anomaly_detail, name="anomaly"),
    path("anomalies/<str:anomaly_id>/resolve", anomalies.anomaly_resolve_view, name="anomaly-resolve"),
    path("invoices/", views.invoices, name="invoices"),
    path("invoices/<int:invoice_id>/stripe-retry", views.invoice_stripe_retry, name="invoice-stripe-retry"),
    path("payments/<slug:kind>/<int:pk>/retry", views.sync_row_retry_view, name="sync-row-retry"),
    path("customers/<str:customer_id>/guardrails/", guardrails.guardrails_page, name="guardrails"),
    path("customers/<str:customer_id>/guardrails/override", guardrails.override_save, name="guardrails-override"),
    path("customers/<str:customer_id>/guardrails/pauses", guardrails.pause_create_view, name="guardrails-pauses"),
    path("customers/<str:customer_id>/guardrails/gateway-keys", guardrails.gateway_key_create_view,
         name="guardrails-gateway-keys"),
    path("customers/<str:customer_id>/guardrails/gateway-keys/<str:prefix>/revoke", guardrails.gateway_key_revoke_view,
         name="guardrails-gateway-key-revoke"),
    path("customers/<str:customer_id>/guardrails/pauses/<str:pause_id>/lift", guardrails.pause_lift_view,
         name="guardrails-pause-lift"),
    path("customers/<str:customer_id>/guardrails/budgets", guardrails.budget_create_view, name="guardrails-budgets"),
    path("customers/<str:customer_id>/guardrails/budgets/<str:budget_id>/delete", guardrails.budget_delete_view,
         name="guardrails-budget-delete"),
    path("customers/<str:customer_id>/guardrails/runs", guardrails.run_change, name="guardrails-runs"),
    path("plans/<str:key>/", views.plan_detail, name="plan"),
    path("plans/<str:key>/versions/new", views.version_editor, name="editor"),
    path("plans/<str:key>/versions/new/tiers", views.editor_tiers, name="editor-tiers"),
    path("plans/<str:key>/versions/new/validate", views.editor_validate, name="editor-validate"),
    path("plans/<str:key>/versions/new/simulate", views.editor_simulate, name="editor-simulate"),
]
