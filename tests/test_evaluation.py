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
    assert out["per_category_p@5"]["Shirts"] == {"p@5": 1.0, "queries": 1}


def test_summary_without_any_colour_reports_category_metrics_only():
    out = summarise([(Labelled("Shirts"), [Labelled("Shirts")], 0.001)], tops=(5,))
    assert out["p@5"] == 0.2
    assert out["cc@5"] is None
