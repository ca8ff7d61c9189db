"""Task routing (fashionsite.celery.route_task): CNN tasks go to the features queue."""

from __future__ import annotations

from fashionsite.celery import app


def test_cnn_tasks_are_routed_to_the_features_queue_named_by_settings(settings):
    router = app.amqp.router
    route = router.route({}, "retrieval.tasks.index_garments")
    assert route["queue"].name == settings.FEATURES_QUEUE
    for name in ("reindex_model", "train_model"):  # their own queue: never ahead of indexing
        assert router.route({}, f"retrieval.tasks.{name}")["queue"].name == "training"
    assert router.route({}, "retrieval.tasks.requeue_stuck")["queue"].name == "default"
    settings.FEATURES_QUEUE = "features-elsewhere"
    assert router.route({}, "retrieval.tasks.index_garments")["queue"].name == "features-elsewhere"
    # An explicit queue still wins (tests/faults/test_worker_killed.py relies on it).
    assert router.route({"queue": "mine"}, "retrieval.tasks.index_garments")["queue"].name == (
        "mine"
    )
