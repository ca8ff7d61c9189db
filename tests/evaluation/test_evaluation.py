"""Metric code on hand-made rankings with known answers."""

import pytest

from retrieval.evaluation import Labelled, precision_at, summarise

RED_TEE = Labelled("Tshirts", "Red")
BLUE_TEE = Labelled("Tshirts", "Blue")
RED_SHIRT = Labelled("Shirts", "Red")


def test_precision_by_category_and_by_category_and_colour():
    ranked = [RED_TEE, BLUE_TEE, RED_SHIRT, RED_TEE, BLUE_TEE]
    assert precision_at(ranked, RED_TEE, 5, colour=False) == pytest.approx(4 / 5)
    assert precision_at(ranked, RED_TEE, 5, colour=True) == pytest.approx(2 / 5)
    assert precision_at(ranked, RED_TEE, 1, colour=True) == 1.0
    assert precision_at(ranked, RED_SHIRT, 3, colour=False) == pytest.approx(1 / 3)


def test_missing_results_count_as_misses_and_colour_is_case_insensitive():
    assert precision_at([Labelled("Tshirts", "red")], RED_TEE, 5, colour=True) == 0.2
    with pytest.raises(ValueError):
        precision_at([], RED_TEE, 0, colour=False)


def test_summary_averages_queries_and_skips_colourless_ones_for_colour_metrics():
    rows = [
        (RED_TEE, [RED_TEE] * 5 + [RED_SHIRT] * 15, 0.010),
        (Labelled("Shirts", ""), [RED_SHIRT] * 10 + [BLUE_TEE] * 10, 0.030),
    ]
    out = summarise(rows, tops=(5, 10, 20))
    assert out["p@5"] == pytest.approx((1.0 + 1.0) / 2)
    assert out["p@10"] == pytest.approx((0.5 + 1.0) / 2)
    assert out["p@20"] == pytest.approx((0.25 + 0.5) / 2)
    assert out["cc@5"] == 1.0  # only the red tee query has a colour
    assert out["cc@20"] == 0.25
    assert out["ms_mean"] == pytest.approx(20.0)
    # Per category: p@k for every k asked, and the number of queries.
    assert out["per_category_p@5"]["Shirts"] == {
        "p@5": 1.0,
        "p@10": 1.0,
        "p@20": 0.5,
        "queries": 1,
    }


def test_summary_without_any_colour_reports_category_metrics_only():
    out = summarise([(Labelled("Shirts"), [Labelled("Shirts")], 0.001)], tops=(5,))
    assert out["p@5"] == 0.2
    assert out["cc@5"] is None


# --------------------------------------------------------------------------- the sweep's search


def hand_made_index():
    import numpy as np

    from retrieval.evaluation import MemoryIndex

    # Cluster 0 near the origin (rows 0-2), cluster 1 near x = 10 (rows 3-4).
    vectors = np.array([[0, 0], [0.1, 0], [0.2, 0], [10, 0], [10.1, 0]], np.float32)
    centroids = np.array([[0.1, 0], [10.05, 0]], np.float32)
    return MemoryIndex(vectors, k=2, centroids=centroids, labels=np.array([0, 0, 0, 1, 1]))


def test_memory_index_probes_the_nearest_cluster_and_widens_for_completeness():
    import numpy as np

    index = hand_made_index()
    q = np.array([0, 0], np.float32)
    assert index.search(q, top=2, probes=1).tolist() == [0, 1]
    assert index.search(q, top=4, probes=1).tolist() == [0, 1, 2, 3]  # cluster 0 holds 3
    assert index.search(q, top=2, probes=1, exclude=0).tolist() == [1, 2]
    only_far = np.array([False, False, False, True, True])
    assert index.search(q, top=2, probes=1, allowed=only_far).tolist() == [3, 4]
    assert index.search(np.array([9, 0], np.float32), top=2, probes=None).tolist() == [3, 4]


def test_memory_index_rerank_puts_the_predicted_category_first_then_the_rest():
    import numpy as np

    index = hand_made_index()
    q = np.array([0, 0], np.float32)
    same = np.array([False, True, False, True, False])
    assert index.reranked(q, top=3, probes=1, exclude=-1, same_category=same).tolist() == [1, 3, 0]
    assert index.reranked(q, top=3, probes=1, exclude=-1, same_category=None).tolist() == [0, 1, 2]


# --------------------------------------------------------------------------- on a real catalogue

SUMMARY_KEYS = {
    *("queries", "skipped", "modes", "exact", "per_category_p@5", "examples"),
    "query_sets",
}
MODE_KEYS = {"p@5", "p@10", "p@20", "cc@5", "cc@10", "cc@20", "ms_mean", "ms_p95"}


def catalogue_state():
    """What an evaluation or a sweep must leave alone: models, clusters, stored vectors."""
    from django.db.models import Count, Sum

    from retrieval.models import ClusterRun, FeatureModel, GarmentFeature, SearchRow

    return (
        list(FeatureModel.objects.order_by("pk").values_list("pk", "active", "colour_weight")),
        list(ClusterRun.objects.order_by("pk").values_list("pk", "active")),
        GarmentFeature.objects.count(),
        SearchRow.objects.aggregate(Sum("cluster"), Count("pk")),
        [
            [round(float(x), 6) for x in vector]
            for vector in GarmentFeature.objects.order_by("pk").values_list("fused", flat=True)[:5]
        ],
    )


@pytest.mark.slow
@pytest.mark.django_db
def test_held_out_report_has_the_summary_keys(trained_catalogue, settings):
    from retrieval.evaluation import run_evaluation

    settings.RETRIEVAL_RERANK = "none"  # the paper's comparison: fused vs deep only
    report = run_evaluation()
    m = report.metrics
    assert set(m) == SUMMARY_KEYS
    assert set(m["modes"]) == set(m["exact"]) == set(m["per_category_p@5"]) == {"fused", "deep"}
    for block in (*m["modes"].values(), *m["exact"].values()):
        assert set(block) == MODE_KEYS
        assert all(0.0 <= block[k] <= 1.0 for k in MODE_KEYS if k.startswith(("p@", "cc@")))
    assert report.model is not None
    assert m["queries"] == len(report.model.split["test"]) and m["skipped"] == 0


@pytest.mark.slow
@pytest.mark.django_db
def test_rerank_mode_is_reported_and_is_the_plain_ranking_when_never_confident(
    trained_catalogue, settings
):
    from retrieval.evaluation import run_evaluation

    settings.RETRIEVAL_RERANK = "category"
    settings.RETRIEVAL_RERANK_MIN_CONFIDENCE = 1.01  # no prediction is that sure
    m = run_evaluation().metrics
    assert set(m["modes"]) == {"fused", "deep", "rerank"}
    for key in ("p@5", "p@10", "cc@10"):
        assert m["modes"]["rerank"][key] == m["modes"]["fused"][key]
        assert m["exact"]["rerank"][key] == m["exact"]["fused"][key]


@pytest.mark.slow
@pytest.mark.django_db
def test_external_query_set_is_searched_not_added_and_unknown_categories_are_skipped(
    trained_catalogue, tmp_path
):
    import zipfile

    from retrieval.evaluation import run_evaluation
    from retrieval.models import Garment

    garments = list(
        Garment.objects.filter(pk__in=trained_catalogue.ids[Garment])
        .select_related("category")
        .order_by("sku")[:2]
    )
    path = tmp_path / "queries.zip"
    with zipfile.ZipFile(path, "w") as archive:
        lines = ["id,image,articleType"]
        for g in garments:  # category names matched whatever their case; no colours given
            lines.append(f"{g.sku}-q,images/{g.sku}-q.jpg,{g.category.name.upper()}")
            archive.writestr(f"images/{g.sku}-q.jpg", g.image.read())
        lines.append(f"x1,images/{garments[0].sku}-q.jpg,Spacesuits")
        archive.writestr("styles.csv", "\n".join(lines) + "\n")
    before = (Garment.objects.count(), catalogue_state())

    m = run_evaluation(queries_path=path, examples=2).metrics

    assert (Garment.objects.count(), catalogue_state()) == before
    assert set(m) == SUMMARY_KEYS
    assert m["queries"] == 2 and m["skipped"] == 1
    assert all(m["modes"][mode][f"cc@{k}"] is None for mode in m["modes"] for k in (5, 10, 20))
    assert all(m["modes"][mode]["p@5"] is not None for mode in m["modes"])
    # A catalogue photo sent as a query finds its own garment first.
    for example, garment in zip(m["examples"], garments, strict=True):
        assert example["query"]["sku"] == f"{garment.sku}-q"
        assert example["fused"][0]["sku"] == garment.sku


@pytest.mark.slow
@pytest.mark.django_db
def test_sweep_works_from_cached_features_and_changes_nothing(trained_catalogue):
    from retrieval.evaluation import GRID_MODES, run_evaluation, run_grid

    before = catalogue_state()
    result = run_grid(weights=(0.0, 0.6), probes=(1, 2), pipelines=("plain", "flip"))
    assert catalogue_state() == before

    rows = result["rows"]
    settings_count = 3  # lab_mean at 0 and 0.6, and the paper as published
    per_pipeline = (1 + settings_count * (len(GRID_MODES) - 1)) * 3  # probes 1, 2, exact
    assert len(rows) == 2 * per_pipeline
    assert {r["pipeline"] for r in rows} == {"plain", "flip"}
    assert {r["probes"] for r in rows} == {1, 2, None}
    assert {
        (r["variant"], r["weight"], r["normalize_deep"]) for r in rows if r["mode"] != "deep"
    } == {
        ("lab_mean", 0.0, True),
        ("lab_mean", 0.6, True),
        ("paper", 1.0, False),
    }
    for row in rows:
        assert 0.0 <= row["p@5"] <= 1.0 and 0.0 <= row["cc@10"] <= 1.0 and row["ms"] >= 0.0
    assert result["queries"]["plain"] == result["queries"]["flip"] > 0

    # Exact search over the same vectors: the sweep agrees with the stored-vector evaluation.
    m = run_evaluation(tops=(5, 10)).metrics

    def row(mode, weight=0.6):
        (found,) = [
            r
            for r in rows
            if r["pipeline"] == "plain"
            and r["probes"] is None
            and r["mode"] == mode
            and (mode == "deep" or (r["variant"], r["weight"]) == ("lab_mean", weight))
        ]
        return found

    for mode in ("fused", "deep"):
        for key in ("p@5", "p@10", "cc@10"):
            assert row(mode)[key] == pytest.approx(m["exact"][mode][key], abs=0.02), (mode, key)


@pytest.mark.slow
@pytest.mark.django_db
def test_evaluate_sweep_command_prints_the_table_and_writes_json(trained_catalogue, tmp_path):
    import io
    import json

    from django.core.management import call_command

    out = io.StringIO()
    path = tmp_path / "sweep.json"
    call_command(
        "evaluate", "--sweep", "--weights", "0.6", "--probes", "1", "--json", str(path), stdout=out
    )
    text = out.getvalue()
    assert "pipeline" in text and "cc@10" in text
    current = [line for line in text.splitlines() if line.endswith("<- current")]
    assert len(current) == 1 and "lab_mean w=0.6" in current[0] and " fused " in current[0]
    data = json.loads(path.read_text())
    assert len(data["rows"]) == (1 + 2 * 3) * 2  # deep + 2 settings x 3 modes, probes 1 + exact
    with pytest.raises(Exception, match="unknown pipeline"):
        call_command("evaluate", "--sweep", "--pipelines", "sideways", stdout=io.StringIO())
