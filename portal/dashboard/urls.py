from django.urls import path

from portal.dashboard import guard_views, views

app_name = "dashboard"

urlpatterns = [
    path("", views.dashboard_home, name="home"),
    path("<str:customer_id>/", views.overview, name="overview"),
    path("<str:customer_id>/glance", views.glance_partial, name="glance"),
    path("<str:customer_id>/charts", views.charts_partial, name="charts"),
    path("<str:customer_id>/usage/", views.usage_breakdown, name="usage"),
    path("<str:customer_id>/runs/<path:run_id>/", views.run_detail, name="run"),
    # no trailing slash: ``runs/a/kill/`` stays the page of a run named "a/kill"
    path("<str:customer_id>/runs/<path:run_id>/kill", guard_views.run_kill_view, name="run-kill"),
    path("<str:customer_id>/runs/<path:run_id>/release", guard_views.run_release_view, name="run-release"),
    path("<str:customer_id>/invoices/", views.invoices, name="invoices"),
    path("<str:customer_id>/settings/", views.settings_page, name="settings"),
    path("<str:customer_id>/settings/users", views.settings_user_add, name="settings-users"),
    path("<str:customer_id>/settings/payment-method", views.settings_payment_method, name="settings-payment-method"),
    path("<str:customer_id>/settings/thresholds", views.settings_threshold_add, name="settings-thresholds"),
    path("<str:customer_id>/settings/thresholds/<int:pk>/delete", views.settings_threshold_delete,
         name="settings-threshold-delete"),
    path("<str:customer_id>/settings/pauses", guard_views.pause_create_view, name="settings-pauses"),
    path("<str:customer_id>/settings/pauses/<str:pause_id>/resume", guard_views.pause_resume_view,
         name="settings-pause-resume"),
    path("<str:customer_id>/settings/budgets", guard_views.budget_create_view, name="settings-budgets"),
    path("<str:customer_id>/settings/gateway-keys", guard_views.gateway_key_create_view, name="settings-gateway-keys"),
    path("<str:customer_id>/settings/gateway-keys/<str:prefix>/revoke", guard_views.gateway_key_revoke_view,
         name="settings-gateway-key-revoke"),
    path("<str:customer_id>/settings/budgets/<str:budget_id>/delete", guard_views.budget_delete_view,
         name="settings-budget-delete"),
]
