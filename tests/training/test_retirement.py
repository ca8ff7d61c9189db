"""Retention of inactive models' search data (training.retire_inactive_models), on real
PostgreSQL: partitions looked up in the catalogue (pg_inherits, pg_class), hand-made vectors."""

from __future__ import annotations

import io
import threading
import time
from datetime import timedelta

import numpy as np
import pytest
from django.core.management import call_command
from django.db import connection, transaction
from django.utils import timezone

from retrieval import search, training
from retrieval.models import ClusterRun, FeatureModel, GarmentFeature
from retrieval.search import clustering
from retrieval.search import table as searchtable
from tests.factories import (
    CategoryFactory,
    FeatureModelFactory,
    GarmentFactory,
    add_cluster_run,
    add_vectors,
)

DIM = 542
K = 3


# --------------------------------------------------------------------------- helpers


def attached_partitions() -> set[str]:
    """Names of the search table's partitions, from the catalogue (not from our bookkeeping)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = %s::regclass",
            [searchtable.SEARCH_TABLE],
        )
        return {name for (name,) in cursor.fetchall()}


def table_exists(name: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [name])
        return cursor.fetchone()[0]


def partitions_of(model: FeatureModel) -> set[str]:
    names = {
        clustering.partition_name(pk) for pk in model.cluster_runs.values_list("id", flat=True)
    }
    return names & attached_partitions()


def active_spaces(model: FeatureModel) -> set[str]:
    return set(model.cluster_runs.filter(active=True).values_list("space", flat=True))


def make_model(garments, *, seed: int, active: bool, activated_days_ago: float | None):
    """A model with vectors for ``garments`` (K blobs) and active runs in both spaces."""
    rng = np.random.default_rng(seed)
    activated_at = None
    if activated_days_ago is not None:
        activated_at = timezone.now() - timedelta(days=activated_days_ago)
    model = FeatureModelFactory(active=active, activated_at=activated_at)
    centres = np.eye(K, DIM, dtype=np.float32) * (1 + seed)
    labels = {g.pk: i % K for i, g in enumerate(garments)}
    vectors = np.vstack(
        [centres[labels[g.pk]] + rng.normal(0, 0.05, DIM).astype(np.float32) for g in garments]
    )
    add_vectors(model, garments, vectors)
    add_cluster_run(model, centres, labels)
    add_cluster_run(model, centres[:, :512].copy(), labels, space="deep")
    return model, vectors


@pytest.fixture
def two_models(db):
    """Model A, active until B was activated a day ago, and B, active; both searchable over the
    same 30 garments, each with a fused and a deep run (four partitions)."""
    category = CategoryFactory(name="Tops")
    garments = [GarmentFactory(category=category) for _ in range(30)]
    old, _ = make_model(garments, seed=1, active=False, activated_days_ago=10)
    new, vectors = make_model(garments, seed=2, active=True, activated_days_ago=1)
    return old, new, garments, vectors


def assert_searches_fine(model, garments, vectors) -> None:
    for i in (0, 7, 29):
        for mode in ("fused", "deep"):
            result = search.search_vectors(fused=vectors[i], model=model, top=5, mode=mode)
            assert result.clusters, "a clustered search, not the exact fallback"
            assert result.hits[0].garment_id == garments[i].pk
            assert result.hits[0].distance == pytest.approx(0.0, abs=1e-4)


def state() -> dict:
    """Everything the sweep may change."""
    return {
        "partitions": attached_partitions(),
        "active_runs": set(ClusterRun.objects.filter(active=True).values_list("id", flat=True)),
        "vectors": {m.pk: m.features.count() for m in FeatureModel.objects.all()},
        "active_model": FeatureModel.objects.get(active=True).pk,
    }


# --------------------------------------------------------------------------- the sweep


def test_after_b_is_active_the_partitions_of_a_are_gone_and_b_searches_fine(two_models):
    old, new, garments, vectors = two_models
    old_parts, new_parts = partitions_of(old), partitions_of(new)
    assert len(old_parts) == 2 and len(new_parts) == 2

    report = training.retire_inactive_models(keep=1)

    assert attached_partitions() == new_parts  # pg_inherits: only B's two partitions
    for name in old_parts:
        assert not table_exists(name)  # dropped, not merely detached
    assert active_spaces(old) == set()  # A's runs deactivated (kept as history, like any)
    assert old.features.count() == len(garments)  # the previous model keeps its vectors
    assert active_spaces(new) == {"fused", "deep"}
    assert new.features.count() == len(garments)
    assert_searches_fine(new, garments, vectors)
    [item] = report.models
    assert item.name == old.name and item.keeps_vectors and item.vectors == 0
    assert sorted(clustering.partition_name(r) for r in item.runs) == sorted(old_parts)
    assert report.failed_runs == []
    # Idempotent: nothing left to do.
    again = training.retire_inactive_models(keep=1)
    assert [item.runs for item in again.models] == [[]] and attached_partitions() == new_parts


def test_the_active_model_is_never_pruned(two_models):
    old, new, garments, vectors = two_models
    new_parts = partitions_of(new)
    report = training.retire_inactive_models(keep=0)  # even keeping no previous model
    assert partitions_of(new) == new_parts and new.features.count() == len(garments)
    assert [item.name for item in report.models] == [old.name]
    assert old.features.count() == 0  # keep 0: the previous model's vectors went too
    # Asked by name (the admin action), the active model is refused with the reason.
    report = training.retire_inactive_models(model_ids=[new.pk])
    assert report.models == []
    assert "active model" in report.skipped[new.name]
    assert partitions_of(new) == new_parts and new.features.count() == len(garments)
    assert_searches_fine(new, garments, vectors)


def test_keep_n_keeps_the_vectors_of_the_most_recently_active_previous_models(two_models):
    old, new, garments, _ = two_models
    oldest, _ = make_model(garments, seed=3, active=False, activated_days_ago=30)
    # Trained without being activated (train_model --no-activate), after all the others.
    candidate, _ = make_model(garments, seed=4, active=False, activated_days_ago=None)

    report = training.retire_inactive_models(keep=1)

    assert [item.name for item in report.models] == [old.name, oldest.name, candidate.name]
    assert attached_partitions() == partitions_of(new)
    assert old.features.count() == len(garments)  # the most recently active previous one
    assert oldest.features.count() == 0
    assert candidate.features.count() == 0
    deleted = {item.name: item.vectors for item in report.models}
    assert deleted == {old.name: 0, oldest.name: len(garments), candidate.name: len(garments)}
    # Heads and model rows stay: any of them can be activated again (reindex_and_activate).
    assert FeatureModel.objects.count() == 4


def test_dry_run_changes_nothing_and_says_what_would_go(two_models):
    old, new, garments, _ = two_models
    oldest, _ = make_model(garments, seed=3, active=False, activated_days_ago=30)
    before = state()

    report = training.retire_inactive_models(keep=1, dry_run=True)

    assert state() == before
    by_name = {item.name: item for item in report.models}
    assert {clustering.partition_name(r) for r in by_name[old.name].runs} == partitions_of(old)
    assert by_name[oldest.name].vectors == len(garments) and not by_name[oldest.name].keeps_vectors
    lines = "\n".join(report.lines())
    assert "would drop" in lines and f"would delete {len(garments)} vectors" in lines

    out = io.StringIO()
    call_command("prune_models", "--dry-run", "--keep", "0", stdout=out)
    assert state() == before
    assert f"{old.name}: would drop" in out.getvalue()
    assert "dry run: nothing changed" in out.getvalue()


def test_prune_models_command(two_models):
    old, new, garments, _ = two_models
    out = io.StringIO()
    call_command("prune_models", stdout=out)
    assert f"{old.name}: dropped the search partitions" in out.getvalue()
    assert attached_partitions() == partitions_of(new)
    assert old.features.count() == len(garments)  # RETRIEVAL_KEEP_MODELS = 1 by default


def test_a_model_being_built_is_left_alone(two_models):
    old, new, garments, _ = two_models
    FeatureModel.objects.filter(pk=old.pk).update(status=FeatureModel.Status.INDEXING)
    old_parts = partitions_of(old)
    report = training.retire_inactive_models(keep=0)
    assert "being built" in report.skipped[old.name]
    assert partitions_of(old) == old_parts and old.features.count() == len(garments)


# --------------------------------------------------------------------------- switching back


def test_activating_a_pruned_model_that_kept_its_vectors_rebuilds_its_runs(two_models):
    """Its partitions were dropped: the activation fits K-means again before the switch, so
    searches are clustered from the first one (not the exact scan of every vector)."""
    old, new, garments, _ = two_models
    training.retire_inactive_models(keep=1)
    assert active_spaces(old) == set() and partitions_of(old) == set()

    training.activate_model(model=old)

    old.refresh_from_db()
    assert old.active and not FeatureModel.objects.get(pk=new.pk).active
    assert active_spaces(old) == {"fused", "deep"}
    assert len(partitions_of(old)) == 2
    old_vectors = np.asarray(
        [GarmentFeature.objects.get(model=old, garment=g).fused for g in garments], np.float32
    )
    assert_searches_fine(old, garments, old_vectors)
    # And the sweep now retires B the same way.
    training.retire_inactive_models(keep=1)
    assert attached_partitions() == partitions_of(old)


def test_activating_a_model_whose_vectors_were_deleted_is_refused_clearly(two_models):
    old, new, garments, vectors = two_models
    training.retire_inactive_models(keep=0)
    with pytest.raises(ValueError, match=r"no vectors.*recomputes them"):
        training.activate_model(model=old)
    assert FeatureModel.objects.get(active=True) == new  # nothing switched
    assert_searches_fine(new, garments, vectors)


# --------------------------------------------------------------------------- concurrency


@pytest.mark.django_db(transaction=True)
def test_the_partitions_go_without_blocking_searches():
    """A search that started before the sweep still reads A's partition: the sweep's
    DETACH ... CONCURRENTLY waits for it, while new searches of B run meanwhile without
    waiting on any lock (lock_timeout would fail them); then A's partitions are dropped."""
    category = CategoryFactory(name="Tops")
    garments = [GarmentFactory(category=category) for _ in range(30)]
    old, _ = make_model(garments, seed=1, active=False, activated_days_ago=10)
    new, vectors = make_model(garments, seed=2, active=True, activated_days_ago=1)
    old_run = old.cluster_runs.get(active=True, space="fused").pk
    old_parts, new_parts = partitions_of(old), partitions_of(new)

    holding, release = threading.Event(), threading.Event()
    outcome: dict = {}

    def long_search() -> None:  # holds the table as a search does, and reads A's partition
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(searchtable.LOCK_FOR_SEARCH_SQL)
                cursor.execute(
                    f"SELECT count(*) FROM {searchtable.SEARCH_TABLE} WHERE run_id = %s",
                    [old_run],
                )
                outcome["rows"] = cursor.fetchone()[0]
                holding.set()
                release.wait(60)
        finally:
            connection.close()

    def sweep() -> None:
        try:
            outcome["report"] = training.retire_inactive_models(keep=1)
        except Exception as exc:  # reported below
            outcome["error"] = exc
        finally:
            connection.close()

    reader = threading.Thread(target=long_search)
    reader.start()
    assert holding.wait(30)
    pruner = threading.Thread(target=sweep)
    pruner.start()
    try:
        # The sweep is waiting for the long search (DETACH CONCURRENTLY's second phase).
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                    "AND query ILIKE %s AND wait_event_type = 'Lock'",
                    ["%DETACH PARTITION%CONCURRENTLY%"],
                )
                if cursor.fetchone()[0]:
                    break
            time.sleep(0.05)
        else:
            pytest.fail("the sweep never waited in DETACH ... CONCURRENTLY")
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '2s'")
        for _ in range(3):
            assert_searches_fine(new, garments, vectors)
        assert pruner.is_alive()  # those searches ran while the sweep was waiting
    finally:
        release.set()
        reader.join(60)
        pruner.join(60)
        with connection.cursor() as cursor:
            cursor.execute("RESET lock_timeout")
    assert outcome["rows"] == len(garments)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["report"].failed_runs == []
    assert attached_partitions() == new_parts
    assert not any(table_exists(name) for name in old_parts)
    assert_searches_fine(new, garments, vectors)


# --------------------------------------------------------------------------- entry points


def wait_until(predicate, timeout=60.0, interval=0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_activation_queues_the_sweep_and_the_admin_deletes_a_models_search_data(
    celery_worker, admin_client
):
    """Through Redis and a real worker: activating A (on commit) queues the sweep, which
    drops B's partitions and keeps its vectors; the admin action then deletes B's vectors
    and refuses the active model."""
    category = CategoryFactory(name="Tops")
    garments = [GarmentFactory(category=category) for _ in range(30)]
    old, _ = make_model(garments, seed=1, active=False, activated_days_ago=10)
    new, _ = make_model(garments, seed=2, active=True, activated_days_ago=1)
    new_parts = partitions_of(new)

    training.activate_model(model=old)  # A still has its runs: a plain switch

    assert wait_until(lambda: not (attached_partitions() & new_parts)), attached_partitions()
    assert active_spaces(new) == set() and new.features.count() == len(garments)
    assert len(partitions_of(old)) == 2

    response = admin_client.post(
        "/admin/retrieval/featuremodel/",
        {"action": "delete_search_data", "_selected_action": [old.pk, new.pk]},
        follow=True,
    )
    page = response.content.decode()
    assert response.status_code == 200
    assert f"Left alone: {old.name}, because it is the active model" in page
    assert f"Deleting the search data of {new.name}" in page
    assert wait_until(lambda: new.features.count() == 0)
    assert old.features.count() == len(garments) and len(partitions_of(old)) == 2
