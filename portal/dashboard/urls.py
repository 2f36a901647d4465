from django.urls import path

from portal.dashboard import views

app_name = "dashboard"

urlpatterns = [
    path("", views.dashboard_home, name="home"),
    path("<str:customer_id>/", views.overview, name="overview"),
    path("<str:customer_id>/glance", views.glance_partial, name="glance"),
    path("<str:customer_id>/charts", views.charts_partial, name="charts"),
    path("<str:customer_id>/usage/", views.usage_breakdown, name="usage"),
    path("<str:customer_id>/runs/<path:run_id>/", views.run_detail, name="run"),
    path("<str:customer_id>/invoices/", views.invoices, name="invoices"),
    path("<str:customer_id>/settings/", views.settings_page, name="settings"),
    path("<str:customer_id>/settings/users", views.settings_user_add, name="settings-users"),
    path("<str:customer_id>/settings/thresholds", views.settings_threshold_add, name="settings-thresholds"),
    path("<str:customer_id>/settings/thresholds/<int:pk>/delete", views.settings_threshold_delete,
         name="settings-threshold-delete"),
]
