"""A stored evaluation report laid out for a merchandiser (issue #16): plain column names with
a one-line explanation each, a chart with its axis and values, query photos beside results."""

from __future__ import annotations

import pytest

from retrieval import evaluation

KEYS = ["p@5", "p@10", "cc@5", "cc@10", "ms_mean", "ms_p95"]


def stored_metrics() -> dict:
    fused = dict(zip(KEYS, [0.8, 0.7, 0.5, 0.4, 3.0, 9.0], strict=True))
    deep = dict(zip(KEYS, [0.6, 0.55, None, None, 2.0, 7.5], strict=True))
    item = {"id": 2, "sku": "S2", "title": "Blue shirt", "category": "Shirts",
            "colour": "Blue", "image": "/media/s2.jpg", "score": 0.91}  # fmt: skip
    return {
        "queries": 4,
        "skipped": 1,
        "modes": {"fused": fused, "deep": deep},
        "exact": {"fused": fused},
        "per_category_p@5": {
            "fused": {"Shirts": {"p@5": 0.8, "queries": 2}, "Jeans": {"p@5": 0.25, "queries": 2}},
            "deep": {"Shirts": {"p@5": 0.6, "queries": 2}, "Jeans": {"p@5": 0.0, "queries": 2}},
        },
        "examples": [
            {
                "query": {
                    "id": 1,
                    "sku": "S1",
                    "category": "Shirts",
                    "colour": "Blue",
                    "image": "/media/s1.jpg",
                },
                "fused": [item, None],
                "deep": [],
            }
        ],
    }


def test_every_column_has_a_plain_name_and_a_one_line_explanation():
    report = evaluation.readable_report(metrics=stored_metrics())
    assert [c.key for c in report.columns] == KEYS
    labels = {c.key: c.label for c in report.columns}
    assert labels["p@5"] == "right category in the top 5"
    assert labels["cc@10"] == "right category and colour in the top 10"
    assert labels["ms_p95"] == "slow search time (ms)"
    for column in report.columns:
        assert "@" not in column.label and "_" not in column.label, column
        assert column.explanation and "\n" not in column.explanation, column
    # A row per mode and search kind; values in column order, unknowns kept as None.
    assert [r.label for r in report.rows] == [
        "colour + shape: fused (cluster)",
        "shape only: deep (cluster)",
        "colour + shape: fused (exact)",
    ]
    assert report.rows[1].values == [0.6, 0.55, None, None, 2.0, 7.5]
    assert all(r.explanation for r in report.rows)
    assert (report.queries, report.skipped) == (4, 1)


def test_the_chart_has_an_axis_from_0_to_100_percent_and_each_bar_its_value():
    chart = evaluation.readable_report(metrics=stored_metrics()).chart
    assert chart.categories == ["Jeans", "Shirts"]
    assert [t.label for t in chart.ticks] == ["0%", "25%", "50%", "75%", "100%"]
    assert chart.ticks[0].x == 0 and chart.ticks[-1].x == chart.width
    assert chart.axis_title
    bars = {(b.category, b.mode): b for b in chart.bars}
    assert len(bars) == 4
    assert bars[("Shirts", "fused")].value == 0.8
    assert bars[("Shirts", "fused")].width == pytest.approx(0.8 * chart.width, abs=0.1)
    assert bars[("Jeans", "deep")].width == 0
    # Bars do not overlap: each category's pair below the previous one.
    ys = sorted(b.y for b in chart.bars)
    assert len(set(ys)) == 4 and ys[-1] < chart.height


def test_each_example_keeps_its_query_beside_its_results_per_mode():
    (example,) = evaluation.readable_report(metrics=stored_metrics()).examples
    assert example.query["image"] == "/media/s1.jpg"
    assert [label for label, _ in example.results] == ["colour + shape", "shape only"]
    fused_items = example.results[0][1]
    assert [i["sku"] for i in fused_items] == ["S2"]  # a garment deleted since is left out
    assert example.results[1][1] == []


def test_an_unknown_metric_is_shown_under_its_own_name():
    column = evaluation.describe_metric("ndcg@10")
    assert (column.label, column.explanation) == ("ndcg@10", "")
