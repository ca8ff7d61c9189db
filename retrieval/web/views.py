"""Server-rendered pages. Thin: they call services and render templates.

The shop: search by photo (home), browse by category, one page per garment with "similar
items". The search page works without JavaScript (a plain multipart form); static/js/search.js
adds drag and drop, paste, cropping and in-place results by posting the same form and inserting
the results fragment the server rendered (so every text is escaped by Django, in one place).
"""

from __future__ import annotations

import base64
import binascii
import io
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
from PIL import Image

from retrieval import catalogue, search
from retrieval.health import health_report
from retrieval.http.errors import error_body
from retrieval.http.middleware import DATABASE_UNAVAILABLE_ERRORS, database_unavailable_response
from retrieval.http.throttle import SearchRateThrottle
from retrieval.images import ImageError
from retrieval.models import Category, FeatureModel, Garment
from retrieval.search import refine
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


class GarmentIdsField(forms.Field):
    """Garment ids sent as repeated hidden fields (the "more / not like this" buttons)."""

    widget = forms.MultipleHiddenInput

    def to_python(self, value: object) -> list[int]:
        values = list(value) if isinstance(value, list | tuple) else ([value] if value else [])
        if len(values) > refine.MAX_FEEDBACK_IDS:
            raise forms.ValidationError(
                f"At most {refine.MAX_FEEDBACK_IDS} garments can be marked; start over.",
                code="too_many",
            )
        ids = []
        for item in values:
            text = str(item).strip()
            if not (text.isascii() and text.isdigit()) or not 0 < int(text) < 2**63:
                raise forms.ValidationError("That is not a garment of the catalogue.")
            ids.append(int(text))
        return list(dict.fromkeys(ids))


class SearchForm(forms.Form):
    """The shopper's search: a photo (or its crop), words, how many results, a category,
    colour, and the garments marked "more / not like this"."""

    image = forms.FileField(label="Photo", required=False)
    # The photo searched last, as a data: URL, carried by the results page (without
    # JavaScript a file input cannot keep the file): "more like this" searches it again.
    photo = forms.CharField(required=False, widget=forms.HiddenInput, max_length=4_000_000)
    q = forms.CharField(
        label="Words (optional)",
        required=False,
        max_length=refine.MAX_QUERY_CHARS,
        widget=forms.TextInput(
            attrs={
                "placeholder": "e.g. in red, dress",
                "autocomplete": "off",
                "enterkeyhint": "search",
            }
        ),
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
        # Shoppers choose among the categories that hold something to find.
        queryset=Category.objects.filter(active=True, garments__status=Garment.Status.READY)
        .distinct()
        .order_by("name"),
        to_field_name="slug",
        required=False,
        empty_label="All categories",
    )
    colour = forms.BooleanField(label="Colour matters", required=False, initial=True)
    like = GarmentIdsField(required=False)
    dislike = GarmentIdsField(required=False)
    # "Start over" (a button of the results) searches the photo without the marks.
    feedback = forms.CharField(required=False, max_length=10)

    def clean_image(self) -> Image.Image | None:
        upload = self.cleaned_data.get("image")
        if not upload:
            return None
        try:
            return catalogue.decode_query_upload(catalogue.read_upload(upload), name=upload.name)
        except ImageError as exc:  # a person's words; the code picks the HTTP status
            raise forms.ValidationError(exc.reason, code=_image_code(exc)) from None

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if self.errors.get("image"):
            return data
        if data.get("image") is None:
            photo = data.get("photo") or ""
            if not photo:
                raise forms.ValidationError("Choose a photo to search with.", code="required")
            try:
                data["image"] = catalogue.decode_query_upload(_data_url_bytes(photo))
            except ImageError as exc:
                raise forms.ValidationError(exc.reason, code=_image_code(exc)) from None
        if data.get("feedback") == "reset":
            data["like"], data["dislike"] = [], []
        return data


def _image_code(exc: ImageError) -> str:
    return "image_too_large" if catalogue.is_too_large(exc) else "invalid_image"


_DATA_URL = re.compile(r"^data:image/[\w.+-]+;base64,")


def _data_url_bytes(text: str) -> bytes:
    """The bytes of a ``data:image/...;base64,`` URL (ImageError when it is not one)."""
    body = _DATA_URL.sub("", text.strip(), count=1)
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise ImageError("the photo could not be read again: choose it once more") from None


#: Longest side of the searched photo shown (and carried) on the results page.
SHOWN_PHOTO_SIDE = 448


def _photo_data_url(image: Image.Image) -> str:
    """A small JPEG of the searched photo as a data: URL (shown above the results, and sent
    back by "more like this" without JavaScript)."""
    small = image.copy()
    small.thumbnail((SHOWN_PHOTO_SIDE, SHOWN_PHOTO_SIDE))
    out = io.BytesIO()
    small.save(out, "JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode("ascii")


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
        found = search.search_photo(
            image=data["image"],
            q=data["q"],
            like=data["like"],
            dislike=data["dislike"],
            top=data["top"],
            mode=mode,
            category_id=category.pk if category else None,
            include_hidden=request.user.is_staff,
        )
    except search.SearchUnavailable:
        return {"error": UNAVAILABLE, "unavailable": True}, 503
    except search.FeedbackError as exc:
        return {"error": f"{exc} Start over with the photo alone."}, 400
    result = found.result
    # Hidden garments are excluded in SQL for shoppers (include_hidden above).
    return {
        "result": result,
        "found": found,
        "hits": result.garments(),
        "top": data["top"],
        "mode": result.mode,
        "category": category or found.understood.category,
        "liked": set(found.feedback.like_ids),
        "show_scores": request.user.is_staff,
    }, 200


@require_http_methods(["GET", "POST"])
def home(request: HttpRequest) -> HttpResponse:
    """Search by photo. A POST answers the whole page, or only the results fragment when the
    page's script asks (X-Requested-With: fetch)."""
    context = {
        "max_upload_bytes": settings.RETRIEVAL_MAX_UPLOAD_BYTES,
        "max_pixels": settings.RETRIEVAL_MAX_PIXELS,
    }
    status = 200
    if request.method == "POST":
        form = SearchForm(request.POST, request.FILES)
        outcome, status = _search(request, form)
        if status == 200:
            outcome["searched_photo"] = _photo_data_url(form.cleaned_data["image"])
        context.update(outcome, form=form, searched=True)
        if request.headers.get("X-Requested-With") == "fetch":
            response = render(request, "retrieval/_results.html", context, status=status)
            response["X-Search-Fragment"] = "1"
            return response
    else:
        form = SearchForm()
    context.update(
        form=form,
        categories=_categories_with_counts(request.user),
        garment_count=visible_garments(request.user).filter(status=Garment.Status.READY).count(),
        search_available=FeatureModel.objects.filter(active=True).exists(),
    )
    return render(request, "retrieval/home.html", context, status=status)


def _categories_with_counts(user):
    """Categories with their number of searchable garments; shoppers see no empty ones."""
    ready = Q(garments__status=Garment.Status.READY)
    categories = (
        visible_categories(user)
        .annotate(garment_count=Count("garments", filter=ready))
        .order_by("name")
    )
    return categories if user.is_staff else categories.filter(garment_count__gt=0)


@require_GET
def category_list(request: HttpRequest) -> HttpResponse:
    categories = _categories_with_counts(request.user)
    return render(request, "retrieval/category_list.html", {"categories": categories})


@require_GET
def category_detail(request: HttpRequest, slug: str) -> HttpResponse:
    category = get_object_or_404(visible_categories(request.user), slug=slug)
    garments = visible_garments(request.user).filter(category=category).select_related("category")
    page = Paginator(garments, PAGE_SIZE).get_page(request.GET.get("page"))
    # Page numbers around the current page and at both ends ("1 2 … 9 10 11 … 250 251"):
    # a category of 6,000 garments has 250 pages, too many to step through one by one.
    numbers = page.paginator.get_elided_page_range(page.number, on_each_side=2, on_ends=1)
    context = {"category": category, "page": page, "page_numbers": list(numbers)}
    return render(request, "retrieval/category_detail.html", context)


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
        "image_size": _shown_size(garment),
        "facts": [(label, attributes[key]) for key, label in FACTS if attributes.get(key)],
        "similar": similar,
        "similar_error": similar_error,
        "top": top,
        "tops": TOPS,
        "colour": colour,
        "show_scores": request.user.is_staff,
    }
    return render(request, "retrieval/garment_detail.html", context)


#: Largest enlargement of a garment photo: the catalogue's 60 x 80 photos blur beyond 2x.
SHARP_SCALE = 2.0
#: The photo's box on a garment page (CSS pixels).
SHOWN_BOX = (300, 400)


def _shown_size(garment: Garment) -> tuple[int, int]:
    """Width and height to show a garment's photo at: fit in SHOWN_BOX, enlarged at most
    SHARP_SCALE times (its header is read, not its pixels); the box when it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with garment.image.open("rb") as fh, Image.open(fh) as image:
            width, height = image.size
    except (OSError, ValueError, UnidentifiedImageError):
        return SHOWN_BOX
    scale = min(SHARP_SCALE, SHOWN_BOX[0] / width, SHOWN_BOX[1] / height)
    return max(1, round(width * scale)), max(1, round(height * scale))


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
