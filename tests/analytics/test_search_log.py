"""Search analytics on the real services: every search recorded after its response, clicks,
the hourly roll-up (roll-up + open hour agree with the raw rows), the dashboard's numbers on a
known log (selector, admin, CSV and staff API), permissions, retention."""

from __future__ import annotations

import csv
import io
import logging
import uuid
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from django.contrib.auth.models import Permission
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.db.models import F
from django.utils import timezone
from rest_framework.test import APIClient

from retrieval import analytics
from retrieval.analytics import rollup
from retrieval.models import Garment, SearchClick, SearchHour, SearchLog, SearchRollupState
from tests.analytics.log import known_log, record
from tests.api.helpers import client_with_token

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_search_throttle")]

SEARCH = "/api/v1/search/"
DASHBOARD = "/admin/retrieval/searchlog/dashboard/"
STATS = "/api/v1/stats/searches/"


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


def upload(garment: Garment) -> SimpleUploadedFile:
    return SimpleUploadedFile("q.jpg", photo_of(garment))


@pytest.fixture
def analyst(django_user_model):
    """Staff with the search log's view permission only."""
    user = django_user_model.objects.create_user("analyst", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_searchlog"))
    return user


# --------------------------------------------------------------------------- recording


def test_an_api_search_is_recorded_with_what_it_returned(query, settings):
    response = APIClient().post(SEARCH, {"image": upload(query), "top": 5, "mode": "fused"})
    assert response.status_code == 200
    body = response.json()
    row = SearchLog.objects.get()
    assert str(row.id) == body["search_id"]
    assert row.channel == "api" and row.mode == "fused" and row.top == 5
    assert row.garment_ids == [r["id"] for r in body["results"]]
    assert row.garment_ids[0] == query.pk
    assert row.predicted_category in set(Garment.objects.values_list("category__name", flat=True))
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
    response = APIClient().post(SEARCH, {"image": upload(query), "category": category.slug})
    assert response.status_code == 200
    row = SearchLog.objects.get()
    assert row.photo.startswith("searches/")
    media_root = Path(settings.MEDIA_ROOT)
    assert (media_root / row.photo).read_bytes()[:2] == b"\xff\xd8"
    assert row.filters == {"category": category.pk}
    # Retention removes the photo with its search.
    SearchLog.objects.filter(pk=row.pk).update(created_at=timezone.now() - timedelta(days=91))
    assert analytics.prune_search_log() == 1
    assert not (media_root / row.photo).exists()


def test_a_shop_search_is_recorded_and_its_result_links_count_clicks(client, query):
    response = client.post("/", {"image": upload(query), "top": 10})
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
    client.get(f"/garments/{row.garment_ids[0]}/?search={row.id}")
    row.refresh_from_db()
    assert row.clicks == 2 and row.first_click_rank == 1
    assert sorted(SearchClick.objects.values_list("rank", flat=True)) == [1, 3]


def test_the_shop_s_in_place_results_are_recorded_too(client, query):
    response = client.post(
        "/", {"image": upload(query), "top": 10}, headers={"X-Requested-With": "fetch"}
    )
    assert response.status_code == 200 and response["X-Search-Fragment"] == "1"
    row = SearchLog.objects.get()
    assert f"?search={row.id}" in response.content.decode()


def test_clicks_on_garments_a_search_did_not_list_or_unknown_searches_count_nothing(client, query):
    client.post("/", {"image": upload(query), "top": 5})
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
    body = api.post(SEARCH, {"image": upload(query)}).json()
    second = body["results"][1]["id"]
    read = api.get(f"/api/v1/garments/{second}/", {"search_id": body["search_id"]})
    assert read.status_code == 200
    row = SearchLog.objects.get(pk=body["search_id"])
    assert row.first_click_rank == 2 and row.clicks == 1
    bad = api.get(f"/api/v1/garments/{second}/", {"search_id": "nope"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid"


def test_recording_off_records_nothing_and_names_no_search(query, settings):
    settings.RETRIEVAL_SEARCH_LOG = False
    body = APIClient().post(SEARCH, {"image": upload(query)})
    assert body.status_code == 200 and body.json()["search_id"] is None
    assert not SearchLog.objects.exists()


def test_a_failed_write_is_logged_and_the_search_still_answers(client, query, caplog):
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
        api = APIClient().post(SEARCH, {"image": upload(query)})
        web = client.post("/", {"image": upload(query)})
    assert api.status_code == 200 and api.json()["results"]
    assert web.status_code == 200 and b"result-list" in web.content
    assert caplog.text.count("could not record search analytics") == 2
    assert "disk full (test)" in caplog.text
    assert not SearchLog.objects.exists()  # and the test's transaction is still usable


# --------------------------------------------------------------------------- the roll-up


def test_latency_percentiles_from_the_histogram_are_within_a_bucket():
    latencies = np.random.default_rng(7).lognormal(mean=4.0, sigma=0.6, size=5000)
    hist = rollup.histogram(latencies)
    assert hist.sum() == 5000
    for q in (0.5, 0.95):
        exact = float(np.quantile(latencies, q))
        assert rollup.percentile(hist, q) == pytest.approx(exact, rel=0.1)
    assert rollup.percentile(rollup.histogram([]), 0.5) is None


def without_mark(stats: analytics.SearchStats) -> dict:
    body = stats.as_dict()
    body.pop("rolled_up_through")
    return body


def test_the_numbers_of_a_known_log_from_the_roll_up(settings):
    settings.RETRIEVAL_SEARCH_LOW_CONFIDENCE = 0.5
    log = known_log()
    raw = analytics.search_stats(start=log["start"], end=log["end"], rollups=False)
    done = analytics.rollup_searches()
    assert done.through == rollup.floor_hour(timezone.now() - rollup.GRACE)
    # One roll-up row per (hour, category) with searches: 09:00 holds two T-shirt searches.
    assert SearchHour.objects.filter(hour__lt=log["end"], hour__gte=log["start"]).count() == 5
    stats = analytics.search_stats(start=log["start"], end=log["end"])
    assert stats.rolled_up_through == done.through
    assert without_mark(stats) == without_mark(raw)
    assert stats.searches == 6
    assert [(d.day.isoformat(), d.searches) for d in stats.per_day] == [
        ("2026-03-01", 3),
        ("2026-03-02", 3),
    ]
    assert stats.per_hour[9] == 3 and stats.per_hour[21] == 1 and stats.per_hour[23] == 1
    assert sum(stats.per_hour) == 6
    # From 10%-wide buckets: the median between the 3rd and 4th latencies (30, 40), p95 in
    # the slowest one's bucket (1000 ms).
    p50, p95 = stats.latency_p50_ms, stats.latency_p95_ms
    assert p50 is not None and 30.0 <= p50 <= 44.0
    assert p95 is not None and 1000.0 / 1.1 <= p95 <= 1100.0
    assert {c.category: c.searches for c in stats.top_categories} == {
        "Tshirts": 3,
        "Shirts": 1,
        "Jeans": 1,
        "": 1,
    }
    assert stats.top_categories[0].category == "Tshirts"
    assert stats.low_confidence == 3  # 0.3, 0.45 and no prediction
    assert stats.low_confidence_share == 0.5
    assert stats.ctr == {1: round(1 / 6, 4), 5: round(2 / 6, 4), 10: round(2 / 6, 4)}
    assert stats.without_click == 3
    assert [s.latency_ms for s in stats.slowest] == [1000.0, 50.0, 40.0, 30.0, 20.0, 10.0]
    # Again: the same rows (the clicked hours are recomputed, from the same raw rows).
    before = list(SearchHour.objects.order_by("hour").values_list("hour", "searches", "clicked"))
    analytics.rollup_searches()
    after = list(SearchHour.objects.order_by("hour").values_list("hour", "searches", "clicked"))
    assert before == after


def test_the_open_hour_is_read_raw_and_a_late_click_reaches_its_closed_hour():
    now = timezone.now()
    closed = record(when=rollup.floor_hour(now) - timedelta(hours=3), latency=80.0)
    analytics.save_searches(records=[closed])
    analytics.rollup_searches()
    rows = list(SearchHour.objects.values_list("searches", "clicked"))
    assert rows == [(1, 0)]
    # A search of the open hour: not rolled up, counted from its raw row.
    fresh = record(when=now, latency=20.0, category="Jeans")
    analytics.save_searches(records=[fresh])
    start, end = analytics.period(days=2)
    stats = analytics.search_stats(start=start, end=end)
    assert stats.searches == 2 and stats.without_click == 2
    assert {c.category for c in stats.top_categories} == {"Tshirts", "Jeans"}
    # A click on the closed hour's search after its roll-up: counted once beat runs again.
    assert analytics.save_click(search_id=closed.id, garment_id=101)
    assert analytics.search_stats(start=start, end=end).without_click == 2
    done = analytics.rollup_searches()
    assert done.hours >= 1
    assert list(SearchHour.objects.values_list("searches", "clicked", "clicked_at_1")) == [
        (1, 1, 1)
    ]
    stats = analytics.search_stats(start=start, end=end)
    assert stats.without_click == 1 and stats.ctr[1] == 0.5
    assert without_mark(stats) == without_mark(
        analytics.search_stats(start=start, end=end, rollups=False)
    )
    # Recomputing an hour again gives the same row (idempotent).
    hour = rollup.floor_hour(closed.created_at)
    before = list(SearchHour.objects.values("searches", "clicked", "latency_hist", "slowest_ms"))
    analytics.rollup_hours(start=hour, end=hour + rollup.HOUR)
    after = list(SearchHour.objects.values("searches", "clicked", "latency_hist", "slowest_ms"))
    assert [{**r, "latency_hist": bytes(r["latency_hist"])} for r in before] == [
        {**r, "latency_hist": bytes(r["latency_hist"])} for r in after
    ]


# --------------------------------------------------------------------------- consumers


def test_the_dashboard_the_csv_and_the_staff_api_show_the_same_numbers(client, analyst, settings):
    settings.RETRIEVAL_SEARCH_LOW_CONFIDENCE = 0.5
    log = known_log()
    analytics.rollup_searches()
    client.force_login(analyst)
    page = client.get(DASHBOARD, {"start": "2026-03-01", "end": "2026-03-02"})
    assert page.status_code == 200
    stats = page.context["stats"]
    html = page.content.decode()
    assert "<strong>6</strong>" in html  # searches
    assert f"{stats.latency_p50_ms} / {stats.latency_p95_ms} ms" in html
    assert 'id="kpi-ctr-1"' in html and "17 %" in html
    assert "Tshirts" in html and "Jeans" in html
    export = client.get(DASHBOARD, {"start": "2026-03-01", "end": "2026-03-02", "format": "csv"})
    assert export["Content-Type"].startswith("text/csv")
    assert "searches-20260301-20260302.csv" in export["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(export.content.decode())))
    assert ["totals", "searches", "6", ""] in rows
    assert ["per day", "2026-03-02", "3", ""] in rows
    assert ["click-through", "at 1", str(round(1 / 6, 4)), ""] in rows
    assert ["totals", "latency p50 ms", str(stats.latency_p50_ms), ""] in rows
    # The API counts the last N days: move the known log to 3 and 2 days ago, roll up again.
    shift = timezone.localtime().date() - log["start"].date() - timedelta(days=3)
    SearchLog.objects.filter(pk__in=[r.id for r in log["records"]]).update(
        created_at=F("created_at") + shift
    )
    SearchHour.objects.all().delete()
    SearchRollupState.objects.all().delete()
    analytics.rollup_searches()
    body = client_with_token(analyst).get(STATS, {"days": 4}).json()
    start, end = analytics.period(days=4)
    same = analytics.search_stats(start=start, end=end)
    assert body["searches"] == same.searches == 6
    assert body["ctr"] == {
        "at_1": round(1 / 6, 4),
        "at_5": round(2 / 6, 4),
        "at_10": round(2 / 6, 4),
    }
    assert body["latency_p95_ms"] == same.latency_p95_ms == stats.latency_p95_ms
    assert [d["searches"] for d in body["per_day"]] == [3, 3, 0, 0]
    assert body["without_click"] == 3 and body["low_confidence_share"] == 0.5


def test_the_numbers_need_the_search_log_s_view_permission(django_user_model, client, analyst):
    assert APIClient().get(STATS).status_code == 401
    shopper = django_user_model.objects.create_user("shopper", password="pw")
    assert client_with_token(shopper).get(STATS).status_code == 403
    client.force_login(shopper)
    assert client.get(DASHBOARD).status_code == 302  # to the login
    bare = django_user_model.objects.create_user("bare-staff", password="pw", is_staff=True)
    assert client_with_token(bare).get(STATS).status_code == 403
    client.force_login(bare)
    assert client.get(DASHBOARD).status_code == 403
    assert client.get(DASHBOARD, {"format": "csv"}).status_code == 403
    # The view permission: the numbers, and the log read-only (no change, no delete).
    assert client_with_token(analyst).get(STATS).status_code == 200
    client.force_login(analyst)
    assert client.get(DASHBOARD).status_code == 200
    analytics.save_searches(records=[record(when=timezone.now())])
    row = SearchLog.objects.get()
    assert client.get("/admin/retrieval/searchlog/").status_code == 200
    assert (
        client.post(f"/admin/retrieval/searchlog/{row.pk}/delete/", {"post": "yes"}).status_code
        == 403
    )
    assert (
        client.post(f"/admin/retrieval/searchlog/{row.pk}/change/", {"top": 1}).status_code == 403
    )
    assert SearchLog.objects.filter(pk=row.pk, top=20).exists()


@pytest.mark.parametrize("days", ["0", "367", "x", ""])
def test_the_stats_refuse_bad_days(analyst, days):
    response = client_with_token(analyst).get(STATS, {"days": days})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid"


def test_an_empty_log_and_a_reversed_range(client, analyst):
    client.force_login(analyst)
    page = client.get(DASHBOARD)
    assert page.status_code == 200 and "No searches in this period." in page.content.decode()
    bad = client.get(DASHBOARD, {"start": "2026-03-05", "end": "2026-03-01"})
    assert bad.status_code == 200 and "The start is after the end." in bad.content.decode()


# --------------------------------------------------------------------------- retention


def test_retention_deletes_old_searches_their_clicks_and_roll_up(settings):
    settings.RETRIEVAL_SEARCH_LOG_DAYS = 30
    now = timezone.now()
    old = record(when=now - timedelta(days=31))
    fresh = record(when=now - timedelta(days=29))
    analytics.save_searches(records=[old, fresh])
    analytics.save_click(search_id=old.id, garment_id=101)
    analytics.rollup_searches()
    assert SearchHour.objects.count() == 2
    from retrieval.jobs import tasks

    assert tasks.prune_search_log.apply().get() == {"deleted": 1}
    assert list(SearchLog.objects.values_list("id", flat=True)) == [fresh.id]
    assert not SearchClick.objects.exists()
    assert list(SearchHour.objects.values_list("hour", flat=True)) == [
        rollup.floor_hour(fresh.created_at)
    ]
    assert analytics.prune_search_log() == 0  # idempotent


def test_the_beat_tasks_are_scheduled_and_roll_up_idempotently():
    from fashionsite.celery import app
    from retrieval.jobs import tasks

    tasks_scheduled = {entry["task"] for entry in app.conf.beat_schedule.values()}
    assert {"retrieval.tasks.prune_search_log", "retrieval.tasks.rollup_searches"} <= (
        tasks_scheduled
    )
    analytics.save_searches(records=[record(when=timezone.now() - timedelta(hours=5))])
    first = tasks.rollup_searches.apply().get()
    assert first["hours"] >= 1
    assert tasks.rollup_searches.apply().get()["hours"] == 0
    assert SearchHour.objects.get().searches == 1


def test_the_analytics_settings_are_checked(settings):
    from retrieval import checks

    settings.RETRIEVAL_SEARCH_LOW_CONFIDENCE = 1.5
    assert [e.id for e in checks.check_low_confidence()] == ["retrieval.E011"]
    settings.RETRIEVAL_SEARCH_LOW_CONFIDENCE = 0.5
    assert checks.check_low_confidence() == []
    settings.RETRIEVAL_SEARCH_LOG_DAYS = 0
    assert "RETRIEVAL_SEARCH_LOG_DAYS" in " ".join(e.msg for e in checks.check_minimums())
    settings.RETRIEVAL_SEARCH_LOG_SCHEDULE = "every day"
    assert "RETRIEVAL_SEARCH_LOG_SCHEDULE" in " ".join(e.msg for e in checks.check_schedules())
