"""Search analytics on the real services: every search recorded after its response, clicks,
the dashboard's numbers on a known log (selector, admin, CSV and staff API), retention."""

from __future__ import annotations

import csv
import io
import logging
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from retrieval import analytics
from retrieval.models import Garment, SearchClick, SearchLog

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_search_throttle")]

SEARCH = "/api/v1/search/"


@pytest.fixture
def query(trained_catalogue) -> Garment:
    garment = (
        Garment.objects.filter(pk__in=trained_catalogue.ids[Garment], category__slug="tshirts")
        .order_by("sku")
        .first()
    )
    assert garment is not None
    return garment


def photo_of(garment: Garment) -> bytes:
    with garment.image.open("rb") as fh:
        return fh.read()


@pytest.fixture
def staff_user(django_user_model):
    return django_user_model.objects.create_user(
        "analyst", password="pw", is_staff=True, is_superuser=True
    )


@pytest.fixture
def staff_api(staff_user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=staff_user).key}")
    return client


# --------------------------------------------------------------------------- recording


def test_an_api_search_is_recorded_with_what_it_returned(query, settings):
    upload = SimpleUploadedFile("q.jpg", photo_of(query))
    response = APIClient().post(SEARCH, {"image": upload, "top": 5, "mode": "fused"})
    assert response.status_code == 200
    body = response.json()
    row = SearchLog.objects.get()
    assert str(row.id) == body["search_id"]
    assert row.channel == "api" and row.mode == "fused" and row.top == 5
    assert row.garment_ids == [r["id"] for r in body["results"]]
    assert row.garment_ids[0] == query.pk
    assert row.predicted_category in Garment.objects.values_list("category__name", flat=True)
    assert row.confidence is not None and 0.0 < row.confidence <= 1.0
    assert row.latency_ms == pytest.approx(body["took_ms"], abs=0.01)
    assert row.filters == {} and row.model == body["model"]
    # Privacy: no photo kept, nothing about the shopper.
    assert row.photo == ""
    assert not list((Path(settings.MEDIA_ROOT) / "searches").rglob(f"{row.id.hex}*"))
    fields = {f.name for f in SearchLog._meta.get_fields()}
    assert not fields & {"user", "ip", "session", "user_agent"}


def test_the_photo_is_kept_only_when_the_setting_says_so(query, settings):
    settings.RETRIEVAL_SEARCH_LOG_PHOTOS = True
    category = query.category
    upload = SimpleUploadedFile("q.jpg", photo_of(query))
    response = APIClient().post(SEARCH, {"image": upload, "category": category.slug})
    assert response.status_code == 200
    row = SearchLog.objects.get()
    assert row.photo.startswith("searches/")
    media_root = Path(settings.MEDIA_ROOT)
    assert (media_root / row.photo).read_bytes()[:2] == b"\xff\xd8"
    assert row.filters == {"category": category.slug}
    # Retention removes the photo with its search.
    SearchLog.objects.filter(pk=row.pk).update(created_at=timezone.now() - timedelta(days=91))
    assert analytics.prune_search_log() == 1
    assert not (media_root / row.photo).exists()


def test_a_shop_search_is_recorded_and_its_result_links_count_clicks(client, query):
    response = client.post("/", {"image": SimpleUploadedFile("q.jpg", photo_of(query)), "top": 10})
    assert response.status_code == 200
    row = SearchLog.objects.get()
    assert row.channel == "web" and row.top == 10
    html = response.content.decode()
    third = row.garment_ids[2]
    link = f"/garments/{third}/?search={row.id}"
    assert link in html
    assert client.get(link).status_code == 200
    assert client.get(link).status_code == 200  # the same result opened twice: one click
    row.refresh_from_db()
    assert row.clicks == 1 and row.first_click_rank == 3
    first = f"/garments/{row.garment_ids[0]}/?search={row.id}"
    client.get(first)
    row.refresh_from_db()
    assert row.clicks == 2 and row.first_click_rank == 1
    assert sorted(SearchClick.objects.values_list("rank", flat=True)) == [1, 3]


def test_clicks_on_garments_a_search_did_not_list_or_unknown_searches_count_nothing(client, query):
    client.post("/", {"image": SimpleUploadedFile("q.jpg", photo_of(query)), "top": 5})
    row = SearchLog.objects.get()
    other = Garment.objects.exclude(pk__in=row.garment_ids).filter(status="ready").first()
    assert other is not None
    assert client.get(f"/garments/{other.pk}/?search={row.id}").status_code == 200
    assert client.get(f"/garments/{query.pk}/?search={uuid.uuid4()}").status_code == 200
    assert client.get(f"/garments/{query.pk}/?search=not-a-uuid").status_code == 200
    row.refresh_from_db()
    assert row.clicks == 0 and not SearchClick.objects.exists()


def test_api_garment_reads_with_a_search_id_count_as_clicks(query):
    api = APIClient()
    body = api.post(SEARCH, {"image": SimpleUploadedFile("q.jpg", photo_of(query))}).json()
    second = body["results"][1]["id"]
    read = api.get(f"/api/v1/garments/{second}/", {"search_id": body["search_id"]})
    assert read.status_code == 200
    row = SearchLog.objects.get(pk=body["search_id"])
    assert row.first_click_rank == 2 and row.clicks == 1
    bad = api.get(f"/api/v1/garments/{second}/", {"search_id": "nope"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid"


def test_recording_off_records_nothing_and_names_no_search(query, settings):
    settings.RETRIEVAL_SEARCH_LOG = False
    body = APIClient().post(SEARCH, {"image": SimpleUploadedFile("q.jpg", photo_of(query))})
    assert body.status_code == 200 and body.json()["search_id"] is None
    assert not SearchLog.objects.exists()


def test_a_failed_write_is_logged_and_the_search_still_answers(query, caplog):
    """A real failure of the database write (a trigger refusing the row)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE FUNCTION refuse_search() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'disk full (test)'; END $$"
        )
        cursor.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON retrieval_searchlog "
            "FOR EACH ROW EXECUTE FUNCTION refuse_search()"
        )
    with caplog.at_level(logging.ERROR, logger="retrieval.analytics.recording"):
        response = APIClient().post(SEARCH, {"image": SimpleUploadedFile("q.jpg", photo_of(query))})
        web = APIClient().post("/", {"image": SimpleUploadedFile("q.jpg", photo_of(query))})
    assert response.status_code == 200 and response.json()["results"]
    assert web.status_code == 200 and b"result-list" in web.content
    assert "could not record search analytics" in caplog.text
    assert not SearchLog.objects.exists()  # and the test's transaction is still usable


# --------------------------------------------------------------------------- the numbers


def known_log() -> dict:
    """Six searches on two days (site time), clicks at ranks 1, 3 and 12."""
    zone = timezone.get_current_timezone()
    day1, day2 = datetime(2026, 3, 1, tzinfo=zone), datetime(2026, 3, 2, tzinfo=zone)
    rows = [  # (when, latency, category, confidence, clicked rank or None)
        (day1.replace(hour=9), 10.0, "Tshirts", 0.9, 1),
        (day1.replace(hour=9, minute=30), 20.0, "Tshirts", 0.8, None),
        (day1.replace(hour=21), 30.0, "Shirts", 0.3, 3),
        (day2.replace(hour=9), 40.0, "Tshirts", 0.95, None),
        (day2.replace(hour=10), 50.0, "Jeans", 0.45, 12),
        (day2.replace(hour=23, minute=59), 1000.0, "", None, None),
    ]
    searches = []
    for when, latency, cat, conf, _ in rows:
        searches.append(
            analytics.SearchRecord(
                channel="api",
                mode="fused",
                top=20,
                filters={},
                latency_ms=latency,
                garment_ids=list(range(101, 121)),
                predicted_category=cat,
                confidence=conf,
                model="m",
                created_at=when,
            )
        )
    analytics.save_searches(searches)
    # Outside the range: must not count.
    analytics.save_searches(
        [
            analytics.SearchRecord(
                channel="web", mode="deep", top=10, filters={}, latency_ms=5000.0,
                garment_ids=[101], predicted_category="Tshirts", confidence=0.9, model="m",
                created_at=day1 - timedelta(seconds=1),
            )
        ]
    )  # fmt: skip
    for record, (*_, rank) in zip(searches, rows, strict=True):
        if rank is not None:
            assert analytics.save_click(search_id=record.id, garment_id=100 + rank)
    return {"start": day1, "end": day2 + timedelta(days=1), "records": searches}


def test_the_numbers_of_a_known_log(settings):
    settings.RETRIEVAL_SEARCH_LOW_CONFIDENCE = 0.5
    log = known_log()
    stats = analytics.search_stats(start=log["start"], end=log["end"])
    assert stats.searches == 6
    assert [(d.day.isoformat(), d.searches) for d in stats.per_day] == [
        ("2026-03-01", 3),
        ("2026-03-02", 3),
    ]
    assert stats.per_day[0].latency_p50_ms == 20.0
    assert stats.per_hour[9] == 3 and stats.per_hour[21] == 1 and stats.per_hour[23] == 1
    assert sum(stats.per_hour) == 6
    assert stats.latency_p50_ms == 35.0  # percentile_cont of 10, 20, 30, 40, 50, 1000
    assert stats.latency_p95_ms == pytest.approx(762.5)
    assert [(c.category, c.searches) for c in stats.top_categories][:1] == [("Tshirts", 3)]
    assert {c.category: c.searches for c in stats.top_categories} == {
        "Tshirts": 3,
        "Shirts": 1,
        "Jeans": 1,
        "": 1,
    }
    assert stats.low_confidence == 3  # 0.3, 0.45 and no prediction
    assert stats.low_confidence_share == 0.5
    assert stats.ctr == {1: round(1 / 6, 4), 5: round(2 / 6, 4), 10: round(2 / 6, 4)}
    assert stats.without_click == 3
    assert [(r.rank, r.clicks) for r in stats.clicks_per_rank] == [(1, 1), (3, 1), (12, 1)]
    assert [s.latency_ms for s in stats.slowest][:2] == [1000.0, 50.0]
    assert len(stats.slowest) == 6


def test_the_dashboard_the_csv_and_the_staff_api_show_the_same_numbers(
    client, staff_user, staff_api, settings
):
    settings.RETRIEVAL_SEARCH_LOW_CONFIDENCE = 0.5
    log = known_log()
    client.force_login(staff_user)
    page = client.get(
        "/admin/retrieval/searchlog/dashboard/", {"start": "2026-03-01", "end": "2026-03-02"}
    )
    assert page.status_code == 200
    html = page.content.decode()
    assert "<strong>6</strong>" in html  # searches
    assert "35.0 / 762.5 ms" in html
    assert 'id="kpi-ctr-1"' in html and "17 %" in html
    assert "Tshirts" in html and "Jeans" in html
    export = client.get(
        "/admin/retrieval/searchlog/dashboard/",
        {"start": "2026-03-01", "end": "2026-03-02", "format": "csv"},
    )
    assert export["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(export.content.decode())))
    assert ["totals", "searches", "6", ""] in rows
    assert ["per day", "2026-03-02", "3", ""] in rows
    assert ["click-through", "at 1", str(round(1 / 6, 4)), ""] in rows
    # The API counts the last N days: move the known log to 3 and 2 days ago.
    shift = timezone.localtime().date() - log["start"].date() - timedelta(days=3)
    SearchLog.objects.filter(pk__in=[r.id for r in log["records"]]).update(
        created_at=models_f("created_at") + shift
    )
    body = staff_api.get("/api/v1/stats/searches/", {"days": 4}).json()
    start, end = analytics.period(days=4)
    same = analytics.search_stats(start=start, end=end)
    assert body["searches"] == same.searches == 6
    assert body["ctr"] == {
        "at_1": round(1 / 6, 4),
        "at_5": round(2 / 6, 4),
        "at_10": round(2 / 6, 4),
    }
    assert body["latency_p95_ms"] == 762.5
    assert [d["searches"] for d in body["per_day"]] == [3, 3, 0, 0]
    assert body["without_click"] == 3 and body["low_confidence_share"] == 0.5


def models_f(name: str):
    from django.db.models import F

    return F(name)


def test_the_stats_are_for_staff_only(django_user_model, client):
    assert APIClient().get("/api/v1/stats/searches/").status_code == 401
    shopper = django_user_model.objects.create_user("shopper", password="pw")
    api = APIClient()
    api.force_authenticate(shopper)
    assert api.get("/api/v1/stats/searches/").status_code == 403
    client.force_login(shopper)
    assert client.get("/admin/retrieval/searchlog/dashboard/").status_code == 302  # to login
    staff = django_user_model.objects.create_user("bare-staff", password="pw", is_staff=True)
    client.force_login(staff)
    assert client.get("/admin/retrieval/searchlog/dashboard/").status_code == 403


@pytest.mark.parametrize("days", ["0", "367", "x", ""])
def test_the_stats_refuse_bad_days(staff_api, days):
    response = staff_api.get("/api/v1/stats/searches/", {"days": days})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid"


def test_an_empty_log_and_a_reversed_range(client, staff_user):
    client.force_login(staff_user)
    page = client.get("/admin/retrieval/searchlog/dashboard/")
    assert page.status_code == 200 and "No searches in this period." in page.content.decode()
    bad = client.get(
        "/admin/retrieval/searchlog/dashboard/", {"start": "2026-03-05", "end": "2026-03-01"}
    )
    assert bad.status_code == 200 and "The start is after the end." in bad.content.decode()


def test_retention_deletes_old_searches_and_their_clicks(settings):
    settings.RETRIEVAL_SEARCH_LOG_DAYS = 30
    now = timezone.now()
    old, fresh = (
        analytics.SearchRecord(
            channel="web", mode="fused", top=10, filters={}, latency_ms=1.0,
            garment_ids=[7], predicted_category="", confidence=None, model="m", created_at=when,
        )
        for when in (now - timedelta(days=31), now - timedelta(days=29))
    )  # fmt: skip
    analytics.save_searches([old, fresh])
    analytics.save_click(search_id=old.id, garment_id=7)
    from retrieval.jobs import tasks

    assert tasks.prune_search_log.apply().get() == {"deleted": 1}
    assert list(SearchLog.objects.values_list("id", flat=True)) == [fresh.id]
    assert not SearchClick.objects.exists()
    assert analytics.prune_search_log() == 0  # idempotent


def test_the_low_confidence_setting_is_checked(settings):
    from retrieval import checks

    settings.RETRIEVAL_SEARCH_LOW_CONFIDENCE = 1.5
    assert [e.id for e in checks.check_low_confidence()] == ["retrieval.E008"]
    settings.RETRIEVAL_SEARCH_LOG_DAYS = 0
    assert "RETRIEVAL_SEARCH_LOG_DAYS" in " ".join(e.msg for e in checks.check_minimums())
