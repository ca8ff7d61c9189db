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
from dataclasses import dataclass
from typing import Any

from django import forms
from django.conf import settings
from django.core.paginator import Paginator
from django.db.models import Count, Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse, QueryDict
from django.shortcuts import get_object_or_404, render
from django.template import loader
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_safe
from django.views.static import serve
from PIL import Image

from retrieval import analytics, catalogue, search
from retrieval.health import cached_health_report, fresh_health_report, public_report
from retrieval.http.errors import error_body
from retrieval.http.middleware import DATABASE_UNAVAILABLE_ERRORS, database_unavailable_response
from retrieval.http.throttle import SearchRateThrottle
from retrieval.images import ImageError
from retrieval.models import Category, FeatureModel, Garment
from retrieval.search import refine
from retrieval.selectors import setup_progress, visible_categories, visible_garments
from retrieval.spec import TOPS

log = logging.getLogger(__name__)

PAGE_SIZE = 24
SLUG = re.compile(r"[-a-zA-Z0-9_]+")
# Catalogue attributes shown on a garment's page (imported columns), with their labels:
# Garment fields first, then what imports kept in ``attributes``.
FACT_FIELDS = (("gender", "Gender"), ("usage", "Usage"), ("season", "Season"), ("year", "Year"))
FACTS = (("masterCategory", "Department"), ("subCategory", "Type"))
# Labels of the filters and their facets, in the order pages show them.
FILTER_LABELS = {
    "gender": "Gender",
    "colour": "Colour",
    "season": "Season",
    "usage": "Usage",
    "category": "Category",
}
UNAVAILABLE = (
    "Search by photo is not available yet: the catalogue has no trained search model. "
    "You can browse by category meanwhile."
)


@require_safe
@never_cache
def healthz(request: HttpRequest) -> JsonResponse:
    """Monitors (GET or HEAD) get the verdict from the cached probe at once; staff get a
    fresh probe with every detail (worker names, versions, errors)."""
    if request.user.is_staff:
        healthy, report = fresh_health_report()
    else:
        healthy, report = cached_health_report()
        report = public_report(report)
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


class FilterForm(forms.Form):
    """The shopper filters of every list and search (the API's parameter names): gender,
    colour, season, usage, category. ``cleaned_data["filters"]`` is a SearchFilters in the
    catalogue's spelling; a value no garment has is a form error naming the known ones."""

    gender = forms.CharField(required=False, strip=True)
    colour = forms.CharField(required=False, strip=True)
    season = forms.CharField(required=False, strip=True)
    usage = forms.CharField(required=False, strip=True)
    category = SlugChoiceField(
        label="Category",
        queryset=Category.objects.filter(active=True),
        to_field_name="slug",
        required=False,
        empty_label="All categories",
    )

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        category = data.get("category")
        try:
            data["filters"] = search.resolve_filters(
                **{name: data.get(name) or "" for name in search.FILTER_FIELDS},
                category_id=category.pk if category is not None else None,
            )
        except search.UnknownFilterValue as exc:
            self.add_error(exc.name, str(exc))
        return data


@dataclass(frozen=True)
class FacetLink:
    """One facet value on a page: its words, how many garments it gives, the page's address
    with it chosen (or, when it is chosen, without it)."""

    label: str
    count: int
    url: str
    selected: bool

    @property
    def count_text(self) -> str:
        return f"{self.count:,}"


@dataclass(frozen=True)
class FacetGroup:
    name: str
    label: str
    links: list[FacetLink]
    values: tuple[search.FacetValue, ...]


def facet_groups(params: QueryDict, facets: list[search.Facet]) -> list[FacetGroup]:
    """Facets as links that choose or clear a value, keeping the page's other parameters (and
    going back to page 1)."""
    groups = []
    for facet in facets:
        links = []
        for value in facet.values:
            query = params.copy()
            query.pop("page", None)
            if value.selected:
                query.pop(facet.name, None)
            else:
                query[facet.name] = value.value
            links.append(
                FacetLink(
                    label=value.label,
                    count=value.count,
                    url=f"?{query.urlencode()}",
                    selected=value.selected,
                )
            )
        if links:
            label = FILTER_LABELS[facet.name]
            groups.append(FacetGroup(facet.name, label, links, facet.values))
    return groups


def page_query(params: QueryDict) -> str:
    """The page's parameters without ``page``, for the pagination links (``&...``)."""
    query = params.copy()
    query.pop("page", None)
    encoded = query.urlencode()
    return f"&{encoded}" if encoded else ""


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


class SearchForm(FilterForm):
    """The shopper's search: a photo (or its crop), words, how many results, whether colour
    matters, the shopper filters, and the garments marked "more / not like this"."""

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
    # "Colour matters" (fused vs deep); the colour *filter* is FilterForm's ``colour``.
    colour_matters = forms.BooleanField(label="Colour matters", required=False, initial=True)
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
    mode = "fused" if data["colour_matters"] else "deep"
    try:
        found = search.search_photo(
            image=data["image"],
            q=data["q"],
            like=data["like"],
            dislike=data["dislike"],
            top=data["top"],
            mode=mode,
            filters=data["filters"],
            include_hidden=request.user.is_staff,
        )
    except search.SearchUnavailable:
        return {"error": UNAVAILABLE, "unavailable": True}, 503
    except search.FeedbackError as exc:
        return {"error": f"{exc} Start over with the photo alone."}, 400
    result = found.result
    record = None
    if analytics.enabled():  # written after the response (home); its links name it
        record = analytics.SearchRecord.of(
            result=result,
            channel="web",
            top=data["top"],
            filters=data["filters"].active() if data.get("filters") else {},
            photo=data["image"],
        )
    # Hidden garments are excluded in SQL for shoppers (include_hidden above).
    return {
        "record": record,
        "result": result,
        "found": found,
        "hits": result.garments(),
        "top": data["top"],
        "mode": result.mode,
        "category": data.get("category") or found.understood.category,
        "liked": set(found.feedback.like_ids),
        "show_scores": request.user.is_staff,
    }, 200


@require_http_methods(["GET", "HEAD", "POST"])
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
        if status == 200:
            outcome["searched_photo"] = _photo_data_url(form.cleaned_data["image"])
        context.update(outcome, form=form, searched=True)
    else:
        form = SearchForm()
    context.update(_filter_menus(request, form))
    if request.method == "POST" and request.headers.get("X-Requested-With") == "fetch":
        response = render(request, "retrieval/_results.html", context, status=status)
        response["X-Search-Fragment"] = "1"
        return _recorded(response, context.get("record"))
    context.update(
        form=form,
        categories=_categories_with_counts(request.user),
        garment_count=visible_garments(request.user).filter(status=Garment.Status.READY).count(),
        search_available=FeatureModel.objects.filter(active=True).exists(),
        setup=setup_progress(),
    )
    return _recorded(
        render(request, "retrieval/home.html", context, status=status), context.get("record")
    )


def _recorded(response: HttpResponse, record: analytics.SearchRecord | None) -> HttpResponse:
    """The response, with its search (if one ran) recorded once it has been sent."""
    if record is not None:
        analytics.record_search(response, record)
    return response


@dataclass(frozen=True)
class MenuOption:
    """One option of a filter menu of the search by photo: ``text`` is "Women (1,204)"."""

    value: str
    label: str
    count: int
    selected: bool

    @property
    def text(self) -> str:
        return f"{self.label} ({self.count:,})"


def _filter_menus(request: HttpRequest, form: SearchForm) -> dict[str, Any]:
    """The filter menus of the search by photo, each value with how many searchable garments
    choosing it gives (the other chosen filters applied; after a search, the filters it was
    run with: a refused form has none). ``filter_facets``: gender, colour, season, usage
    (values found in the catalogue); ``category_menu``: every category the form offers, with
    0 for those the other filters leave empty (the predicted-category chips set this menu, so
    it keeps every category); ``menu_counts``: {filter: {value: "Label (count)"}}, read by the
    page's script to update the menus after a search it made without reloading the page."""
    chosen = getattr(form, "cleaned_data", {}).get("filters") or search.SearchFilters()
    facets = search.facet_counts(
        queryset=visible_garments(request.user).filter(status=Garment.Status.READY),
        filters=chosen,
        names=search.facets.FACETS,
    )
    groups = [g for g in facet_groups(QueryDict(), facets) if g.name != "category"]
    by_slug = {
        v.value: v.count for facet in facets if facet.name == "category" for v in facet.values
    }
    selected = form.data.get("category", "") if form.is_bound else ""
    category_menu = [
        MenuOption(
            value=category.slug,
            label=category.name,
            count=by_slug.get(category.slug, 0),
            selected=category.slug == selected,
        )
        for category in form.fields["category"].queryset  # type: ignore[attr-defined]
    ]
    counts = {
        group.name: {link.label: f"{link.label} ({link.count_text})" for link in group.links}
        for group in groups
    }
    counts["category"] = {option.value: option.text for option in category_menu}
    return {"filter_facets": groups, "category_menu": category_menu, "menu_counts": counts}


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
    """One category's garments, newest first, narrowed by the shopper filters (with facets)."""
    category = get_object_or_404(visible_categories(request.user), slug=slug)
    garments = visible_garments(request.user).filter(category=category).select_related("category")
    params = request.GET.copy()
    params.pop("category", None)  # the page is the category
    form = FilterForm(params)
    context, status = _filtered_list(
        request, form=form, garments=garments, facets=search.FILTER_FIELDS
    )
    context["category"] = category
    return render(request, "retrieval/category_detail.html", context, status=status)


@require_GET
def keyword_search(request: HttpRequest) -> HttpResponse:
    """Search by words (``q``), best match first, narrowed by the shopper filters."""
    q = request.GET.get("q", "").strip()
    form = FilterForm(request.GET)
    garments = visible_garments(request.user).select_related("category")
    context: dict = {"q": q}
    try:
        matches = search.keyword.keyword_search(queryset=garments, q=q)
    except search.keyword.KeywordQueryError as exc:
        context.update(error=str(exc), q=q[:200])
        return render(request, "retrieval/keyword_results.html", context, status=400)
    context.update(matches=matches)
    listed, status = _filtered_list(
        request, form=form, garments=matches.garments, facets=search.facets.FACETS
    )
    context.update(listed)
    if not matches.terms:
        context["page"] = None
    return render(request, "retrieval/keyword_results.html", context, status=status)


def _filtered_list(
    request: HttpRequest, *, form: FilterForm, garments: QuerySet[Garment], facets: tuple[str, ...]
) -> tuple[dict, int]:
    """A page of ``garments`` narrowed by the form's filters, and the facets over them:
    (template context, HTTP status: 400 for an unknown filter value)."""
    if not form.is_valid():
        errors = [m for messages in form.errors.values() for m in messages]
        return {"filter_errors": errors, "page": None, "facets": []}, 400
    filters = form.cleaned_data["filters"]
    page = Paginator(garments.filter(filters.q()), PAGE_SIZE).get_page(request.GET.get("page"))
    groups = facet_groups(
        request.GET, search.facet_counts(queryset=garments, filters=filters, names=facets)
    )
    chosen = [
        (FILTER_LABELS[group.name], link)
        for group in groups
        for link in group.links
        if link.selected
    ]
    # Page numbers around the current page and at both ends ("1 2 … 9 10 11 … 250 251"):
    # a category of 6,000 garments has 250 pages, too many to step through one by one.
    numbers = page.paginator.get_elided_page_range(page.number, on_each_side=2, on_ends=1)
    return {
        "page": page,
        "page_numbers": list(numbers),
        "facets": groups,
        "chosen": chosen,
        "page_query": page_query(request.GET),
    }, 200


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
    facts = [(label, getattr(garment, name)) for name, label in FACT_FIELDS]
    facts += [(label, attributes.get(key)) for key, label in FACTS]
    context = {
        "garment": garment,
        "image_size": _shown_size(garment),
        "facts": [(label, value) for label, value in facts if value],
        "similar": similar,
        "similar_error": similar_error,
        "top": top,
        "tops": TOPS,
        "colour": colour,
        "show_scores": request.user.is_staff,
    }
    response = render(request, "retrieval/garment_detail.html", context)
    # Opened from a search's results (their links name the search): a click, for analytics.
    search_id = analytics.parse_search_id(request.GET.get("search"))
    if search_id is not None:
        analytics.record_click(response, search_id=search_id, garment_id=garment.pk)
    return response


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

    Only ``garments/**.jpg``: the JPEGs the site re-encoded itself (catalogue.store_image),
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
