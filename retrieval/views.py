"""Server-rendered pages. Thin: they call services and render templates."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from retrieval.health import health_report
from retrieval.models import Category, Garment


@require_GET
@never_cache
def healthz(request: HttpRequest) -> JsonResponse:
    healthy, report = health_report()
    return JsonResponse(report, status=200 if healthy else 503)


@require_GET
def home(request: HttpRequest) -> HttpResponse:
    context = {
        "categories": Category.objects.filter(active=True).order_by("name"),
        "garment_count": Garment.objects.filter(status=Garment.Status.READY).count(),
    }
    return render(request, "retrieval/home.html", context)
