"""A newly trained model goes live only when it is not worse than the live one; otherwise staff
see both side by side and decide."""

from __future__ import annotations

import pytest

from retrieval import evaluation, training
from retrieval.evaluation.promotion import HELD_OUT, Comparison, compare
from retrieval.evaluation.reports import HELD_OUT_EXAMPLES
from retrieval.models import EvaluationReport, FeatureModel
from tests.factories import FeatureModelFactory


def comparison(candidate: float, live: float | None, name: str = "held-out") -> Comparison:
    return Comparison(query_set=name, metric="p@10 (fused)", candidate=candidate, live=live)


def test_a_model_worse_on_any_query_set_is_not_activated():
    decision = evaluation.decide(
        comparisons=[comparison(0.80, 0.70), comparison(0.40, 0.55, "shoppers.zip")],
        live_model="live-1",
    )
    assert not decision.activate
    assert "shoppers.zip: 0.400 < 0.550" in decision.reason and "live-1" in decision.reason


def test_a_model_not_worse_is_activated_and_the_first_model_always():
    assert evaluation.decide(comparisons=[comparison(0.7, 0.7)], live_model="live-1").activate
    assert evaluation.decide(comparisons=[comparison(0.1, None)], live_model=None).activate


def _report(model: FeatureModel, held_out: float, sets: list[dict]) -> EvaluationReport:
    return EvaluationReport.objects.create(
        model=model,
        status=EvaluationReport.Status.DONE,
        metrics={"modes": {"fused": {"p@10": held_out}}, "query_sets": sets},
    )


def _set(name: str, p10: float | None, *, queries: int = 4, error: str = "") -> dict:
    modes = {} if p10 is None else {"fused": {"p@5": p10, "p@10": p10}}
    return {"name": name, "queries": queries, "error": error, "modes": modes}


@pytest.mark.django_db
def test_the_gate_compares_every_query_set_the_evaluation_reports():
    """Held-out catalogue photos, then each of the report's query sets (held-out example
    senders, RETRIEVAL_EVALUATION_QUERY_SETS); a set unread or without queries is left out."""
    live_model: FeatureModel = FeatureModelFactory.create(active=True)
    new_model: FeatureModel = FeatureModelFactory.create(active=False)
    sets = [
        _set(HELD_OUT_EXAMPLES, 0.5),
        _set("street", 0.3),
        _set("broken", None, queries=0, error="not a zip"),
        _set("empty", None, queries=0),
    ]
    live = _report(live_model, 0.6, sets)
    candidate = _report(
        new_model, 0.7, [_set(HELD_OUT_EXAMPLES, 0.4), _set("street", 0.3), *sets[2:]]
    )
    comparisons = compare(candidate=candidate, live=live, mode="fused")
    assert [(c.query_set, c.candidate, c.live) for c in comparisons] == [
        (HELD_OUT, 0.7, 0.6),
        (HELD_OUT_EXAMPLES, 0.4, 0.5),
        ("street", 0.3, 0.3),
    ]
    assert {c.candidate_report for c in comparisons} == {candidate.pk}
    decision = evaluation.decide(comparisons=comparisons, live_model=live_model.name)
    assert not decision.activate and HELD_OUT_EXAMPLES in decision.reason
    first = compare(candidate=candidate, live=None, mode="rerank")  # falls back to fused
    assert [c.live for c in first] == [None, None, None]


@pytest.mark.slow
@pytest.mark.django_db
def test_a_worse_trained_model_stays_inactive_and_staff_see_why(
    trained_catalogue, settings, admin_client
):
    """The candidate's fused vector is dominated by colour (weight 30): in the shop's fused
    ranking it finds the right category less often than the live model."""
    settings.RETRIEVAL_RERANK = "none"
    settings.RETRIEVAL_COLOUR_WEIGHT = 30.0
    live = FeatureModel.objects.get(active=True)
    candidate = training.new_feature_model(backbone=live.backbone)
    try:
        decision = evaluation.train_and_promote(model=candidate, epochs=20)
        candidate.refresh_from_db()
        assert not decision.activate, decision.reason
        assert FeatureModel.objects.get(active=True).pk == live.pk
        assert candidate.status == FeatureModel.Status.READY and not candidate.active
        stored = candidate.metrics["promotion"]
        assert not stored["activate"] and "worse than the live model" in stored["reason"]
        held_out = stored["comparisons"][0]
        assert held_out["query_set"] == "held-out catalogue photos"
        assert held_out["candidate"] < held_out["live"]

        listing = admin_client.get("/admin/retrieval/featuremodel/").content.decode()
        assert "not activated" in listing
        page = admin_client.get(f"/admin/retrieval/featuremodel/{candidate.pk}/change/")
        text = page.content.decode()
        assert 'id="model-comparison"' in text and ">worse<" in text
        assert f"/admin/retrieval/featuremodel/{candidate.pk}/activate/" in text
        confirm = admin_client.get(f"/admin/retrieval/featuremodel/{candidate.pk}/activate/")
        assert confirm.status_code == 200 and "Yes, make" in confirm.content.decode()
        assert live.name in confirm.content.decode()
    finally:
        if candidate.head_path:
            candidate.head_path.unlink(missing_ok=True)
