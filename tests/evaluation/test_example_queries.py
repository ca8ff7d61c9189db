"""Every evaluation reports the held-out example photos (issue #14) as a query set, overall
and per category, plus the labelled sets RETRIEVAL_EVALUATION_QUERY_SETS names; the admin's
report page shows them."""

from __future__ import annotations

import pytest
from django.core import checks

from retrieval import catalogue
from retrieval.checks import check_examples
from retrieval.evaluation import run_evaluation
from retrieval.evaluation.reports import HELD_OUT_EXAMPLES
from retrieval.models import Garment
from tests.catalogue_zips import examples_from_garments
from tests.training.test_example_training import senders_with_role


@pytest.mark.slow
@pytest.mark.django_db
def test_evaluation_reports_held_out_examples_and_named_query_sets_per_category(
    trained_catalogue, tmp_path, settings, admin_client
):
    garments = list(
        Garment.objects.filter(pk__in=trained_catalogue.ids[Garment])
        .select_related("category")
        .order_by("sku")[:4]
    )
    (train,) = senders_with_role("train", 1, holdout=0.5)
    (held,) = senders_with_role("holdout", 1, holdout=0.5)
    source = examples_from_garments(
        tmp_path / "examples.zip",
        [
            ("t1", garments[0], train),
            ("h1", garments[1], held),
            ("h2", garments[2], held),
            ("h3", garments[3], held),
        ],
    )
    catalogue.import_example_photos(source=source, holdout=0.5)
    extra = examples_from_garments(
        tmp_path / "shop-photos.zip", [("q1", garments[0], ""), ("q2", garments[1], "")]
    )
    settings.RETRIEVAL_EVALUATION_QUERY_SETS = [str(extra), str(tmp_path / "missing.zip")]
    settings.RETRIEVAL_RERANK = "category"

    report = run_evaluation(tops=(5, 10, 20))

    held_out, named, missing = report.metrics["query_sets"]
    assert held_out["name"] == HELD_OUT_EXAMPLES and held_out["queries"] == 3
    assert not held_out["error"]
    assert set(held_out["modes"]) == {"fused", "deep", "rerank"}
    assert set(held_out["modes"]["fused"]) == {"p@5", "p@10", "p@20"}
    categories = {g.category.name for g in garments[1:]}
    for mode in held_out["modes"]:
        per_category = held_out["per_category"][mode]
        assert set(per_category) == categories
        assert sum(row["queries"] for row in per_category.values()) == 3
        assert all(set(row) == {"p@5", "p@10", "p@20", "queries"} for row in per_category.values())
    # A catalogue photo finds garments of its own category first (sanity: it searched).
    assert held_out["modes"]["fused"]["p@5"] > 0
    assert named["name"] == "shop-photos" and named["queries"] == 2 and not named["error"]
    assert missing["queries"] == 0 and "does not exist" in missing["error"]

    page = admin_client.get(f"/admin/retrieval/evaluationreport/{report.pk}/change/")
    html = page.content.decode()
    assert page.status_code == 200
    assert html.count('class="module query-set"') == 3
    assert "shoppers&#x27; photos (held-out senders)" in html
    for name in categories:
        assert f'<th scope="row">{name}</th>' in html


def test_missing_query_set_is_a_warning_and_a_bad_holdout_an_error(settings, tmp_path):
    settings.RETRIEVAL_EVALUATION_QUERY_SETS = [str(tmp_path / "nope.zip")]
    settings.RETRIEVAL_EXAMPLE_PHOTOS = ""
    settings.RETRIEVAL_EXAMPLE_HOLDOUT = 0.25
    messages = check_examples()
    assert [(m.id, m.level) for m in messages] == [("retrieval.W001", checks.WARNING)]
    settings.RETRIEVAL_EVALUATION_QUERY_SETS = []
    settings.RETRIEVAL_EXAMPLE_HOLDOUT = 0.95
    assert [m.id for m in check_examples()] == ["retrieval.E009"]
