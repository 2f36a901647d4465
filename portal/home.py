"""``/``: where someone opening the portal's address belongs. Operator staff go to the pricing console,
everyone else to their dashboard (which sends the anonymous to the login page)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponseRedirect
from django.urls import reverse


def home(request: HttpRequest) -> HttpResponseRedirect:
    user = request.user
    staff = user.is_authenticated and user.is_staff
    return HttpResponseRedirect(reverse("console:index" if staff else "dashboard:home"))
