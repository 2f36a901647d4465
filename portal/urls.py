from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

from billing.audit.apis import AuditLogApi
from billing.catalog.apis import CustomerSubscriptionApi, MetersApi, PlansApi, PlanVersionsApi
from billing.customers.apis import CustomerDetailApi, CustomerProjectsApi, CustomersApi
from billing.guardrails.anomalies.apis import AnomaliesApi, AnomalyResolveApi
from billing.guardrails.apis import (
    CustomerAlertsApi,
    CustomerAlertThresholdsApi,
    CustomerBalanceApi,
    CustomerBudgetDetailApi,
    CustomerBudgetsApi,
    CustomerCreditsApi,
    CustomerOverridesApi,
    CustomerPauseDetailApi,
    CustomerPausesApi,
    CustomerRunActionApi,
    CustomerRunApi,
    ReservationReleaseApi,
    ReservationsApi,
)
from billing.invoicing.apis import (
    CustomerUpcomingInvoiceApi,
    InvoiceDetailApi,
    InvoiceFinalizeApi,
    InvoiceMarkPaidApi,
    InvoiceMarkUncollectibleApi,
    InvoicePdfApi,
    InvoicesApi,
    InvoiceVoidApi,
)
from billing.notify.apis import (
    WebhookDeliveriesApi,
    WebhookDeliveryResendApi,
    WebhookEndpointDetailApi,
    WebhookEndpointsApi,
)
from billing.payments.views import paystack_webhook, stripe_webhook
from billing.usage.apis import CustomerUsageApi, CustomerUsageCsvApi, EventBatchApi, EventsApi, ReservationSettleApi
from portal import gateway
from portal.apidocs import ApiDocsView
from portal.health import healthz, readyz
from portal.home import home
from portal.invoices import invoice_document, invoice_document_pdf, invoice_stylesheet

api = [
    path("events", EventsApi.as_view(), name="events"),
    path("events/batch", EventBatchApi.as_view(), name="events-batch"),
    path("meters", MetersApi.as_view(), name="meters"),
    path("reservations", ReservationsApi.as_view(), name="reservations"),
    path("reservations/<str:reservation_id>/settle", ReservationSettleApi.as_view(), name="reservation-settle"),
    path("reservations/<str:reservation_id>/release", ReservationReleaseApi.as_view(), name="reservation-release"),
    path("plans", PlansApi.as_view(), name="plans"),
    path("plans/<str:plan_key>/versions", PlanVersionsApi.as_view(), name="plan-versions"),
    path("customers", CustomersApi.as_view(), name="customers"),
    path("customers/<str:customer_id>", CustomerDetailApi.as_view(), name="customer"),
    path("customers/<str:customer_id>/projects", CustomerProjectsApi.as_view(), name="customer-projects"),
    path("customers/<str:customer_id>/usage", CustomerUsageApi.as_view(), name="customer-usage"),
    path("customers/<str:customer_id>/usage.csv", CustomerUsageCsvApi.as_view(), name="customer-usage-csv"),
    path("customers/<str:customer_id>/balance", CustomerBalanceApi.as_view(), name="customer-balance"),
    path("customers/<str:customer_id>/alerts", CustomerAlertsApi.as_view(), name="customer-alerts"),
    path("customers/<str:customer_id>/alert-thresholds", CustomerAlertThresholdsApi.as_view(),
         name="customer-alert-thresholds"),
    path("customers/<str:customer_id>/overrides", CustomerOverridesApi.as_view(), name="customer-overrides"),
    path("customers/<str:customer_id>/pauses", CustomerPausesApi.as_view(), name="customer-pauses"),
    path("customers/<str:customer_id>/pauses/<str:pause_id>", CustomerPauseDetailApi.as_view(), name="customer-pause"),
    path("customers/<str:customer_id>/runs/<str:run_id>", CustomerRunApi.as_view(), name="customer-run"),
    path("customers/<str:customer_id>/runs/<str:run_id>/kill", CustomerRunActionApi.as_view(), {"action": "kill"},
         name="customer-run-kill"),
    path("customers/<str:customer_id>/runs/<str:run_id>/release", CustomerRunActionApi.as_view(), {"action": "release"},
         name="customer-run-release"),
    path("customers/<str:customer_id>/budgets", CustomerBudgetsApi.as_view(), name="customer-budgets"),
    path("customers/<str:customer_id>/budgets/<str:budget_id>", CustomerBudgetDetailApi.as_view(),
         name="customer-budget"),
    path("customers/<str:customer_id>/credits", CustomerCreditsApi.as_view(), name="customer-credits"),
    path("customers/<str:customer_id>/subscription", CustomerSubscriptionApi.as_view(), name="customer-subscription"),
    path("customers/<str:customer_id>/upcoming-invoice", CustomerUpcomingInvoiceApi.as_view(),
         name="customer-upcoming-invoice"),
    path("invoices", InvoicesApi.as_view(), name="invoices"),
    path("invoices/<str:invoice_id>", InvoiceDetailApi.as_view(), name="invoice"),
    path("invoices/<str:invoice_id>/pdf", InvoicePdfApi.as_view(), name="invoice-pdf-api"),
    path("invoices/<str:invoice_id>/finalize", InvoiceFinalizeApi.as_view(), name="invoice-finalize"),
    path("invoices/<str:invoice_id>/void", InvoiceVoidApi.as_view(), name="invoice-void"),
    path("invoices/<str:invoice_id>/mark_paid", InvoiceMarkPaidApi.as_view(), name="invoice-mark-paid"),
    path("invoices/<str:invoice_id>/mark_uncollectible", InvoiceMarkUncollectibleApi.as_view(),
         name="invoice-mark-uncollectible"),
    path("anomalies", AnomaliesApi.as_view(), name="anomalies"),
    path("anomalies/<str:anomaly_id>/resolve", AnomalyResolveApi.as_view(), name="anomaly-resolve"),
    path("audit-log", AuditLogApi.as_view(), name="audit-log"),
    path("webhook-endpoints", WebhookEndpointsApi.as_view(), name="webhook-endpoints"),
    path("webhook-endpoints/<str:endpoint_id>", WebhookEndpointDetailApi.as_view(), name="webhook-endpoint"),
    path("webhook-endpoints/<str:endpoint_id>/deliveries", WebhookDeliveriesApi.as_view(), name="webhook-deliveries"),
    path("webhook-endpoints/<str:endpoint_id>/deliveries/<str:delivery_id>/resend", WebhookDeliveryResendApi.as_view(),
         name="webhook-delivery-resend"),
    path("schema", SpectacularAPIView.as_view(authentication_classes=[], permission_classes=[]), name="schema"),
]

handler400 = "portal.health.bad_request"
handler403 = "portal.health.forbidden"
handler404 = "portal.health.not_found"
handler500 = "portal.health.server_error"

urlpatterns = [
    path("", home, name="home"),
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    path("admin/", admin.site.urls),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("console/", include("portal.console.urls")),
    path("dashboard/", include("portal.dashboard.urls")),
    path("invoices/invoice.css", invoice_stylesheet, name="invoice-stylesheet"),
    path("invoices/<int:invoice_id>/", invoice_document, name="invoice-document"),
    path("invoices/<int:invoice_id>.pdf", invoice_document_pdf, name="invoice-pdf"),
    path("webhooks/stripe", stripe_webhook, name="stripe-webhook"),
    path("gateway/v1/chat/completions", gateway.chat_completions, name="gateway-chat-completions"),
    path("gateway/v1/embeddings", gateway.embeddings, name="gateway-embeddings"),
    path("webhooks/paystack", paystack_webhook, name="paystack-webhook"),
    path("api/docs", ApiDocsView.as_view(url_name="schema"), name="api-docs"),
    path("api/v1/", include(api)),
]
