from django.urls import path

from portal.console import views

app_name = "console"

urlpatterns = [
    path("", views.console_index, name="index"),
    path("audit/", views.audit_trail, name="audit"),
    path("invoices/", views.invoices, name="invoices"),
    path("invoices/<int:invoice_id>/stripe-retry", views.invoice_stripe_retry, name="invoice-stripe-retry"),
    path("plans/<str:key>/", views.plan_detail, name="plan"),
    path("plans/<str:key>/versions/new", views.version_editor, name="editor"),
    path("plans/<str:key>/versions/new/tiers", views.editor_tiers, name="editor-tiers"),
    path("plans/<str:key>/versions/new/validate", views.editor_validate, name="editor-validate"),
    path("plans/<str:key>/versions/new/simulate", views.editor_simulate, name="editor-simulate"),
]
