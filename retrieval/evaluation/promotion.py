"""Promotion: a newly trained model goes live only when it searches at least as well as the
live one, measured on the same kinds of photos; otherwise it waits for staff to decide.

Each model is evaluated once (``run_evaluation``): on its own held-out catalogue photos (never
trained on) and on every query set that evaluation reports (``metrics["query_sets"]``: the
example photos of the held-out senders and each zip of RETRIEVAL_EVALUATION_QUERY_SETS, the same
photos for both models). A query set that could not be read or had no query, for either model,
is left out of the comparison (its error is in the report). The figure compared is
precision@10 by category in the mode the shop serves (the category re-rank when
RETRIEVAL_RERANK=category, else the fused search): what a shopper sees in the top 10.
The decision, with both reports, is stored on the candidate (``metrics["promotion"]``); the
admin shows it side by side and lets staff activate a model the gate held back.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

from django.conf import settings
from django.utils import timezone

from retrieval.evaluation.reports import run_evaluation
from retrieval.models import EvaluationReport, FeatureModel
from retrieval.selectors import active_model
from retrieval.training import activate_model, train_model

log = logging.getLogger(__name__)

# Held-out photos per model in a promotion's evaluation (a seeded sample beyond that): enough
# to tell models apart, few enough that a 40k catalogue's evaluation takes a minute.
PROMOTION_QUERY_LIMIT = 1000
METRIC = "p@10"
HELD_OUT = "held-out catalogue photos"


def served_mode() -> str:
    """The evaluation mode matching what shoppers get."""
    return "rerank" if settings.RETRIEVAL_RERANK == "category" else "fused"


@dataclass(frozen=True)
class Comparison:
    """One query set: the candidate's and the live model's figure (``live`` None: no live)."""

    query_set: str
    metric: str
    candidate: float
    live: float | None
    candidate_report: int | None = None
    live_report: int | None = None

    @property
    def worse(self) -> bool:
        return self.live is not None and self.candidate < self.live


@dataclass(frozen=True)
class PromotionDecision:
    activate: bool
    reason: str
    live_model: str | None
    comparisons: list[Comparison] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "activate": self.activate,
            "reason": self.reason,
            "live_model": self.live_model,
            "comparisons": [asdict(c) for c in self.comparisons],
            "decided_at": timezone.now().isoformat(),
        }


def decide(*, comparisons: list[Comparison], live_model: str | None) -> PromotionDecision:
    """Activate unless the candidate is worse than the live model on some query set."""
    if live_model is None:
        return PromotionDecision(True, "no model was live", None, comparisons)
    worse = [c for c in comparisons if c.worse]
    if not worse:
        shown = "; ".join(f"{c.query_set}: {c.candidate:.3f} vs {c.live:.3f}" for c in comparisons)
        return PromotionDecision(
            True, f"not worse than {live_model} ({METRIC}: {shown})", live_model, comparisons
        )
    shown = "; ".join(f"{c.query_set}: {c.candidate:.3f} < {c.live:.3f}" for c in worse)
    return PromotionDecision(
        False,
        f"worse than the live model {live_model} ({METRIC}, {shown}); search keeps using "
        f"{live_model}. Compare the two and activate it by hand if you prefer it.",
        live_model,
        comparisons,
    )


def _figure(report: EvaluationReport, mode: str) -> float:
    modes = report.metrics.get("modes", {})
    values = modes.get(mode) or modes["fused"]
    return float(values[METRIC])


def _set_figure(report: EvaluationReport, name: str, mode: str) -> float | None:
    """The figure of the report's query set ``name``; None when it has none (unreadable, no
    query, or not in this report)."""
    for entry in report.metrics.get("query_sets", []):
        if entry.get("name") == name and not entry.get("error") and entry.get("queries"):
            modes = entry.get("modes", {})
            values = modes.get(mode) or modes.get("fused")
            return float(values[METRIC]) if values and METRIC in values else None
    return None


def _evaluate(model: FeatureModel) -> EvaluationReport:
    return run_evaluation(model=model, limit=PROMOTION_QUERY_LIMIT, category_field="articleType")


def compare(
    *, candidate: EvaluationReport, live: EvaluationReport | None, mode: str
) -> list[Comparison]:
    """One comparison for the held-out catalogue photos, then one per query set both reports
    measured (the candidate's order)."""
    metric = f"{METRIC} ({mode})"
    live_pk = live.pk if live is not None else None
    comparisons = [
        Comparison(
            query_set=HELD_OUT,
            metric=metric,
            candidate=_figure(candidate, mode),
            live=_figure(live, mode) if live is not None else None,
            candidate_report=candidate.pk,
            live_report=live_pk,
        )
    ]
    for entry in candidate.metrics.get("query_sets", []):
        name = entry.get("name", "")
        ours = _set_figure(candidate, name, mode)
        theirs = _set_figure(live, name, mode) if live is not None else None
        if ours is None or (live is not None and theirs is None):
            continue
        comparisons.append(
            Comparison(
                query_set=name,
                metric=metric,
                candidate=ours,
                live=theirs,
                candidate_report=candidate.pk,
                live_report=live_pk,
            )
        )
    return comparisons


def evaluate_and_promote(*, model: FeatureModel) -> PromotionDecision:
    """Evaluate a trained (inactive) model against the live one and activate it when it is
    not worse; store the decision on the model either way. The model gets its K-means runs
    first (evaluations search clustered, as the shop does)."""
    from retrieval.search import clustering

    live = active_model()
    if live is not None and live.pk == model.pk:
        return PromotionDecision(True, "already live", live.name)
    clustering.ensure_active_runs(model=model)
    mode = served_mode()
    candidate_report = _evaluate(model)
    live_report = _evaluate(live) if live is not None else None
    comparisons = compare(candidate=candidate_report, live=live_report, mode=mode)
    decision = decide(comparisons=comparisons, live_model=live.name if live else None)
    metrics = {**FeatureModel.objects.get(pk=model.pk).metrics, "promotion": decision.as_dict()}
    FeatureModel.objects.filter(pk=model.pk).update(metrics=metrics)
    model.metrics = metrics
    if decision.activate:
        activate_model(model=model)
        log.info("model %s activated: %s", model.name, decision.reason)
    else:
        log.warning("model %s not activated: %s", model.name, decision.reason)
    model.refresh_from_db()
    return decision


def train_and_promote(
    *, model: FeatureModel, epochs: int | None = None, category_field: str = "category"
) -> PromotionDecision:
    """The admin's "Train a new model": train (vectors computed, not activated), evaluate
    against the live model, activate only when not worse."""

    def stage(name: str) -> None:
        FeatureModel.objects.filter(pk=model.pk).update(progress={"stage": name})

    model = train_model(model=model, epochs=epochs, category_field=category_field, activate=False)
    stage("evaluating")
    try:
        decision = evaluate_and_promote(model=model)
    except Exception as exc:
        FeatureModel.objects.filter(pk=model.pk).update(
            error=f"evaluation before activation failed: {exc.__class__.__name__}: {exc}"[:2000]
        )
        raise
    stage("done" if decision.activate else "not activated")
    return decision
