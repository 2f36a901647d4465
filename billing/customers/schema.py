"""OpenAPI descriptions of Tollgate's authenticators (loaded by drf-spectacular via apps.ready)."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class ApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = "billing.customers.authentication.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema: object) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer tg_<prefix>_<secret>"}


class SessionScheme(OpenApiAuthenticationExtension):
    target_class = "billing.customers.authentication.SessionPrincipalAuthentication"
    name = "Session"

    def get_security_definition(self, auto_schema: object) -> dict[str, str]:
        return {"type": "apiKey", "in": "cookie", "name": "sessionid"}
