"""Training feature models, activating them, and retiring the inactive ones' search data."""

from retrieval.training.activation import (
    activate_model,
    queue_activation,
    recompute_vectors,
    reindex_and_activate,
    vectors_key,
)
from retrieval.training.progress import StageClock, progress_text, time_left
from retrieval.training.retirement import (
    ModelRetirement,
    RetirementReport,
    queue_model_retirement,
    retire_inactive_models,
    retirement_refusal,
)
from retrieval.training.training import (
    after_import,
    load_backbone_features,
    new_feature_model,
    queue_training,
    requeue_unqueued_trainings,
    split_catalogue,
    train_model,
)

__all__ = [
    "ModelRetirement",
    "RetirementReport",
    "StageClock",
    "activate_model",
    "after_import",
    "load_backbone_features",
    "new_feature_model",
    "progress_text",
    "queue_activation",
    "queue_model_retirement",
    "queue_training",
    "recompute_vectors",
    "reindex_and_activate",
    "requeue_unqueued_trainings",
    "retire_inactive_models",
    "retirement_refusal",
    "split_catalogue",
    "time_left",
    "train_model",
    "vectors_key",
]
