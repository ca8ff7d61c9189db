"""Server-rendered pages. Thin: they call services and render templates.

The shop: search by photo (home), browse by category, one page per garment with "similar
items". The search page works without JavaScript (a plain multipart form); static/js/search.js
adds drag and drop, paste, cropping and in-place results by posting the same form and inserting
the results fragment the server rendered (so every text is escaped by Django, in one place).
"""

from __future__ import annotations

import logging
import posixpath
import re
import sys
from typing import Any

from django import forms
from django.conf import settings
from django.core.paginator import Paginator
from django.db.models import Count, Q
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, render
from django.template import loader
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_safe
from django.views.static import serve

from retrieval import analytics, catalogue, search
from retrieval.health import health_report
from retrieval.http.errors import error_body
from retrieval.http.middleware import DATABASE_UNAVAILABLE_ERRORS, database_unavailable_response
from retrieval.http.throttle import SearchRateThrottle
from retrieval.images import ImageError
from retrieval.models import Category, FeatureModel, Garment
from retrieval.selectors import visible_categories, visible_garments
from retrieval.spec import TOPS

log = logging.getLogger(__name__)

PAGE_SIZE = 24
SLUG = re.compile(r"[-a-zA-Z0-9_]+")
# Catalogue attributes shown on a garment's page (imported columns), with their labels.
FACTS = (
    ("gender", "Gender"),
    ("masterCategory", "Department"),
    ("subCategory", "Type"),
    ("usage", "Usage"),
    ("season", "Season"),
    ("year", "Year"),
)
UNAVAILABLE = (
    "Search by photo is not available yet: the catalogue has no trained search model. "
    "You can browse by category meanwhile."
)


@require_GET
@never_cache
def healthz(request: HttpRequest) -> JsonResponse:
    healthy, report = health_report()
    return JsonResponse(report, status=200 if healthy else 503)


class SlugChoiceField(forms.ModelChoiceField):
    """A ModelChoiceField by slug that refuses values no slug can be (NUL bytes would reach
    PostgreSQL and fail there)."""

    def to_python(self, value):
        if value not in self.empty_values and not SLUG.fullmatch(str(value)):
            raise forms.ValidationError(
                self.error_messages["invalid_choice"], code="invalid_choice"
            )
        return super().to_python(value)


class SearchForm(forms.Form):
    """The shopper's search: a photo (or its crop), how many results, a category, colour."""

    image = forms.FileField(
        label="Photo",
        error_messages={"required": "Choose a photo to search with."},
    )
    top = forms.TypedChoiceField(
        label="Results",
        choices=[(n, str(n)) for n in TOPS],
        coerce=int,
        initial=10,
        required=False,
        empty_value=10,
        widget=forms.RadioSelect,
    )
    category = SlugChoiceField(
        label="Category",
        queryset=Category.objects.filter(active=True),
        to_field_name="slug",
        required=False,
        empty_label="All categories",
    )
    colour = forms.BooleanField(label="Colour matters", required=False, initial=True)

    def clean_image(self):
        upload = self.cleaned_data["image"]
        try:
            return catalogue.decode_upload(catalogue.read_upload(upload), name=upload.name)
        except ImageError as exc:  # a person's words; the code picks the HTTP status
            code = "image_too_large" if catalogue.is_too_large(exc) else "invalid_image"
            raise forms.ValidationError(exc.reason, code=code) from None


def _search(request: HttpRequest, form: SearchForm) -> tuple[dict, int]:
    """Run the shopper's search: (template context, HTTP status)."""
    throttle = SearchRateThrottle()
    if not throttle.allow_request(request, None):
        wait = int((throttle.wait() or 60) + 0.999)
        return {"error": f"Too many searches from your network: try again in {wait} s."}, 429
    if not form.is_valid():
        codes = {e.code for errors in form.errors.as_data().values() for e in errors}
        return {}, 413 if "image_too_large" in codes else 400
    data = form.cleaned_data
    category = data.get("category")
    mode = "fused" if data["colour"] else "deep"
    try:
        result = search.search_image(
            image=data["image"],
            top=data["top"],
            mode=mode,
            category_id=category.pk if category else None,
            include_hidden=request.user.is_staff,
        )
    except search.SearchUnavailable:
        return {"error": UNAVAILABLE, "unavailable": True}, 503
    record = None
    if analytics.enabled():  # written after the response (home)
        record = analytics.SearchRecord.of(
            result=result,
            channel="web",
            top=data["top"],
            filters={"category": category.slug} if category else {},
            photo=data["image"],
        )
    # Hidden garments are excluded in SQL for shoppers (include_hidden above).
    context = {"result": result, "hits": result.garments(), "top": data["top"], "mode": mode}
    return {**context, "record": record}, 200


@require_http_methods(["GET", "POST"])
def home(request: HttpRequest) -> HttpResponse:
    """Search by photo. A POST answers the whole page, or only the results fragment when the
    page's script asks (X-Requested-With: fetch)."""
    context: dict[str, Any] = {
        "max_upload_bytes": settings.RETRIEVAL_MAX_UPLOAD_BYTES,
        "max_pixels": settings.RETRIEVAL_MAX_PIXELS,
    }
    status = 200
    if request.method == "POST":
        form = SearchForm(request.POST, request.FILES)
        outcome, status = _search(request, form)
        context.update(outcome, form=form, searched=True)
        if request.headers.get("X-Requested-With") == "fetch":
            response = render(request, "retrieval/_results.html", context, status=status)
            response["X-Search-Fragment"] = "1"
            return _recorded(response, outcome.get("record"))
    else:
        form = SearchForm()
    context.update(
        form=form,
        categories=_categories_with_counts(request.user),
        garment_count=visible_garments(request.user).filter(status=Garment.Status.READY).count(),
        search_available=FeatureModel.objects.filter(active=True).exists(),
    )
    return _recorded(
        render(request, "retrieval/home.html", context, status=status), context.get("record")
    )


def _recorded(response: HttpResponse, record: analytics.SearchRecord | None) -> HttpResponse:
    """The response, with its search (if one ran) recorded once it has been sent."""
    if record is not None:
        analytics.record_search(response, record)
    return response


def _categories_with_counts(user):
    ready = Q(garments__status=Garment.Status.READY)
    return (
        visible_categories(user)
        .annotate(garment_count=Count("garments", filter=ready))
        .order_by("name")
    )


@require_GET
def category_list(request: HttpRequest) -> HttpResponse:
    categories = _categories_with_counts(request.user)
    return render(request, "retrieval/category_list.html", {"categories": categories})


@require_GET
def category_detail(request: HttpRequest, slug: str) -> HttpResponse:
    category = get_object_or_404(visible_categories(request.user), slug=slug)
    garments = visible_garments(request.user).filter(category=category).select_related("category")
    page = Paginator(garments, PAGE_SIZE).get_page(request.GET.get("page"))
    return render(request, "retrieval/category_detail.html", {"category": category, "page": page})


@require_GET
def garment_detail(request: HttpRequest, pk: int) -> HttpResponse:
    garment = get_object_or_404(visible_garments(request.user).select_related("category"), pk=pk)
    top = _int_choice(request.GET.get("top"), TOPS, default=10)
    colour = request.GET.get("colour", "on") != "off"
    similar, similar_error = [], None
    if garment.status != Garment.Status.READY:
        similar_error = (
            f"This garment is {garment.status}: similar items appear once it is indexed."
        )
    else:
        try:
            result = search.more_like_this(
                garment=garment,
                top=top,
                mode="fused" if colour else "deep",
                include_hidden=request.user.is_staff,
            )
            similar = result.garments()
        except search.SearchUnavailable:
            similar_error = "Similar items appear once the catalogue's search model is trained."
    attributes = garment.attributes if isinstance(garment.attributes, dict) else {}
    context = {
        "garment": garment,
        "facts": [(label, attributes[key]) for key, label in FACTS if attributes.get(key)],
        "similar": similar,
        "similar_error": similar_error,
        "top": top,
        "tops": TOPS,
        "colour": colour,
    }
    response = render(request, "retrieval/garment_detail.html", context)
    # Opened from a search's results (their links name the search): a click, for analytics.
    search_id = analytics.parse_search_id(request.GET.get("search"))
    if search_id is not None:
        analytics.record_click(response, search_id=search_id, garment_id=garment.pk)
    return response


def _int_choice(raw: str | None, choices, *, default: int) -> int:
    try:
        value = int(raw or default)
    except ValueError:
        return default
    return value if value in choices else default


# --------------------------------------------------------------------------- media


@require_safe
def media_file(request: HttpRequest, path: str) -> HttpResponse:
    """Garment photos from MEDIA_ROOT, where Django serves media (DJANGO_SERVE_MEDIA).

    Only ``garments/**.jpg``: the JPEGs the site re-encoded itself (catalogue.store_garment_image),
    never import archives or anything else in media storage, never a path out of MEDIA_ROOT
    (``..`` is resolved first; serve() refuses what still climbs out). Sent as image/jpeg with
    nosniff and a sandboxing CSP, so even a file that slipped in some other way is never run
    as a page.
    """
    name = posixpath.normpath(path)
    if not (name.startswith("garments/") and name.lower().endswith((".jpg", ".jpeg"))):
        raise Http404("no such image")
    response = serve(request, name, document_root=settings.MEDIA_ROOT)
    response["Content-Type"] = "image/jpeg"
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Security-Policy"] = "default-src 'none'; sandbox"
    return response


# --------------------------------------------------------------------------- error pages


def page_not_found(request: HttpRequest, exception=None) -> HttpResponse:
    """handler404: the API's JSON error shape under /api/, the shop's page elsewhere."""
    if request.path.startswith("/api/"):
        body = error_body("not_found", f"no API endpoint at {request.path}")
        return JsonResponse(body, status=404)
    return render(request, "404.html", status=404)


def server_error(request: HttpRequest) -> HttpResponse:
    """handler500: as page_not_found; renders without a request context (it may be broken).

    A database outage raised outside a view (in a middleware, e.g. saving the session) is
    answered 503 like one raised inside (retrieval.http.middleware). Django calls this handler
    while handling the exception, so sys.exc_info() still names it.
    """
    exception = sys.exc_info()[1]
    if isinstance(exception, DATABASE_UNAVAILABLE_ERRORS):
        log.warning("database unavailable, %s answered 503: %s", request.path, exception)
        return database_unavailable_response(request)
    if request.path.startswith("/api/"):
        body = error_body("server_error", "internal server error: the error was logged")
        return JsonResponse(body, status=500)
    return HttpResponse(loader.get_template("500.html").render(), status=500)
