"""Cluster-filtered vector search on real PostgreSQL/pgvector, with hand-made vectors."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from django.db import connection

from retrieval import indexing, search
from retrieval.models import GarmentFeature, SearchRow
from retrieval.search import clustering
from tests.factories import (
    CategoryFactory,
    FeatureModelFactory,
    GarmentFactory,
    add_cluster_run,
    add_vectors,
)

DIM = 542


def blob(rng, centre, n, spread=0.05):
    return (centre + rng.normal(0, spread, size=(n, DIM))).astype(np.float32)


@pytest.fixture
def catalogue(db):
    """Three clusters: A (3 garments, small), B (30), C (30); an active run labelling them."""
    rng = np.random.default_rng(0)
    model = FeatureModelFactory()
    centres = np.zeros((3, DIM), dtype=np.float32)
    centres[0, 0], centres[1, 1], centres[2, 2] = 1.0, 1.0, 1.0
    sizes = [3, 30, 30]
    tops, shoes = CategoryFactory(name="Tops"), CategoryFactory(name="Shoes")
    garments, vectors, labels = [], [], {}
    for label, (centre, n) in enumerate(zip(centres, sizes, strict=True)):
        pts = blob(rng, centre, n)
        for i in range(n):
            g = GarmentFactory(category=tops if i % 2 else shoes)
            garments.append(g)
            vectors.append(pts[i])
            labels[g.pk] = label
    vectors = np.vstack(vectors)
    add_vectors(model, garments, vectors)
    add_cluster_run(model, centres, labels)
    return model, garments, vectors, centres


@pytest.mark.parametrize("top", [5, 10, 20])
def test_returns_n_results_even_when_the_nearest_cluster_is_small(catalogue, top):
    model, garments, vectors, centres = catalogue
    result = search.search_vectors(fused=centres[0], model=model, top=top, mode="fused")
    assert len(result.hits) == top
    # The 3 garments of the small nearest cluster come first, then the next clusters fill in.
    assert {h.garment_id for h in result.hits[:3]} == {g.pk for g in garments[:3]}
    assert result.clusters[0] == 0 and len(result.clusters) >= 2
    assert [h.distance for h in result.hits] == sorted(h.distance for h in result.hits)


def test_one_probe_stays_inside_the_nearest_cluster_when_it_is_big_enough(catalogue):
    model, garments, vectors, centres = catalogue
    result = search.search_vectors(fused=centres[1], model=model, top=20, mode="fused")
    assert result.clusters == [1]
    assert {h.garment_id for h in result.hits} <= {g.pk for g in garments[3:33]}


def test_identical_vector_comes_first_with_score_zero(catalogue):
    model, garments, vectors, _ = catalogue
    result = search.search_vectors(fused=vectors[40], model=model, top=5)
    assert result.hits[0].garment_id == garments[40].pk
    assert result.hits[0].score == pytest.approx(0.0, abs=1e-5)
    assert all(h.score <= 0 for h in result.hits)


def test_returns_everything_when_the_catalogue_holds_fewer_than_n(catalogue):
    model, garments, _, centres = catalogue
    result = search.search_vectors(fused=centres[2], model=model, top=100)
    assert len(result.hits) == len(garments)


def test_exact_mode_ignores_clusters(catalogue):
    model, garments, vectors, _ = catalogue
    query = (vectors[0] + vectors[10]) / 2  # halfway between clusters A and B
    exact = search.search_vectors(fused=query, model=model, top=10, mode="exact")
    distances = np.linalg.norm(vectors - query, axis=1)
    brute = np.argsort(distances)[:10]
    # Garments 0 and 10 are equally far from the midpoint: compare the ranked distances and
    # the set of ids, not the order of that tie.
    np.testing.assert_allclose([h.distance for h in exact.hits], distances[brute], rtol=1e-5)
    assert {h.garment_id for h in exact.hits} == {garments[i].pk for i in brute}
    assert exact.clusters == []


def test_category_filter_and_exclusion(catalogue):
    model, garments, vectors, centres = catalogue
    shoes = garments[0].category
    result = search.search_vectors(
        fused=centres[1],
        model=model,
        top=10,
        category_id=shoes.pk,
        exclude_garment_ids=(garments[4].pk,),
    )
    assert len(result.hits) == 10
    ids = {h.garment_id for h in result.hits}
    assert garments[4].pk not in ids
    assert all(g.category_id == shoes.pk for g in garments if g.pk in ids)


def test_fused_and_deep_modes_rank_a_colour_swapped_copy_differently(db):
    """Same deep part, different colour part: deep ignores colour, fused prefers same colour."""
    rng = np.random.default_rng(1)
    model = FeatureModelFactory()
    deep = rng.normal(size=512).astype(np.float32)
    deep /= np.linalg.norm(deep)
    red, blue = np.zeros(30, np.float32), np.zeros(30, np.float32)
    red[1::3], blue[2::3] = 0.5, 0.5
    query = np.concatenate([deep, red])
    # Blue copy with the identical deep part; red garment whose deep part differs a little.
    blue_copy = np.concatenate([deep, blue])
    red_other = np.concatenate([deep + rng.normal(0, 0.02, 512).astype(np.float32), red])
    garments = [GarmentFactory(colour="Blue"), GarmentFactory(colour="Red")]
    add_vectors(model, garments, np.vstack([blue_copy, red_other]))
    by_deep = search.search_vectors(fused=query, model=model, top=2, mode="deep")
    by_fused = search.search_vectors(fused=query, model=model, top=2, mode="fused")
    assert [h.garment_id for h in by_deep.hits] == [garments[0].pk, garments[1].pk]
    assert [h.garment_id for h in by_fused.hits] == [garments[1].pk, garments[0].pk]


def test_more_like_this_uses_stored_vectors_and_excludes_the_garment(catalogue):
    model, garments, _, _ = catalogue
    result = search.more_like_this(garment=garments[10], top=5)
    assert len(result.hits) == 5
    assert garments[10].pk not in {h.garment_id for h in result.hits}


def test_without_an_active_model_search_says_so(db):
    with pytest.raises(search.SearchUnavailable):
        search.require_active_model()


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_cluster_switch_is_atomic_under_concurrent_searches():
    """Two runs label the same data with permuted labels; switching back and forth while
    searches run, every search must still find the exact copy first (a search that saw the
    new labels with the old centroids would look in the wrong cluster)."""
    rng = np.random.default_rng(2)
    model = FeatureModelFactory()
    k = 6
    centres = np.eye(k, DIM, dtype=np.float32) * 2
    garments, vectors, labels = [], [], []
    for label in range(k):
        pts = blob(rng, centres[label], 25)
        for p in pts:
            garments.append(GarmentFactory())
            vectors.append(p)
            labels.append(label)
    vectors = np.vstack(vectors)
    labels = np.asarray(labels)
    add_vectors(model, garments, vectors)
    run_a = add_cluster_run(
        model, centres, {g.pk: int(lab) for g, lab in zip(garments, labels, strict=True)}
    )
    feature_ids = np.asarray(
        [GarmentFeature.objects.get(model=model, garment=g).pk for g in garments], dtype=np.int64
    )
    permuted = centres[::-1].copy()  # run B: label i <-> k-1-i
    run_b = add_cluster_run(
        model, permuted, {g.pk: int(k - 1 - lab) for g, lab in zip(garments, labels, strict=True)}
    )
    runs = [(run_a, labels), (run_b, k - 1 - labels)]

    stop = threading.Event()
    failures: list[str] = []
    searches = [0]

    def searcher() -> None:
        try:
            i = 0
            while not stop.is_set():
                j = (i * 37) % len(garments)
                result = search.search_vectors(fused=vectors[j], model=model, top=5)
                if result.hits[0].garment_id != garments[j].pk or result.hits[0].distance > 1e-4:
                    failures.append(f"query {j}: clusters {result.clusters}")
                searches[0] += 1
                i += 1
        finally:
            connection.close()

    threads = [threading.Thread(target=searcher) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for n in range(12):
            run, lab = runs[n % 2]
            clustering.switch_run(run=run, feature_ids=feature_ids, labels=lab)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert searches[0] > 20
    assert failures == []
    # Old partitions were dropped (or are, once no search holds the table): only the active
    # run's is left.
    assert clustering.drop_stale_partitions() == []
    assert clustering.partition_run_ids() == [model.cluster_runs.get(active=True).pk]


def test_deep_mode_uses_the_deep_space_clusters(catalogue):
    """The deep-only baseline is searched through its own K-means run (deep vectors, its own
    label column), not through the fused run's labels."""
    model, garments, vectors, centres = catalogue
    fused_label = [0] * 3 + [1] * 30 + [2] * 30
    # Same partition, numbered the other way round: mixing up the label columns would probe
    # the wrong cluster and miss the exact copy.
    add_cluster_run(
        model,
        centres[::-1, :512].copy(),
        {g.pk: 2 - fused_label[i] for i, g in enumerate(garments)},
        space="deep",
    )
    for i in (1, 7, 50):
        result = search.search_vectors(fused=vectors[i], model=model, top=5, mode="deep")
        assert result.hits[0].garment_id == garments[i].pk
        assert result.hits[0].distance == pytest.approx(0.0, abs=1e-5)
        assert result.clusters[0] == 2 - fused_label[i]


def test_hidden_garments_are_skipped_and_n_results_still_come_back(catalogue):
    """Garments in an inactive category, or no longer ready, are never returned; the search
    widens to the next clusters so the shopper still gets N results."""
    model, garments, vectors, centres = catalogue
    shoes = garments[0].category
    shoes.active = False
    shoes.save()
    garments[1].status = "failed"
    garments[1].save()
    result = search.search_vectors(fused=centres[0], model=model, top=10)
    ids = {h.garment_id for h in result.hits}
    assert len(result.hits) == 10
    assert garments[1].pk not in ids
    visible = {g.pk for g in garments if g.category_id != shoes.pk and g != garments[1]}
    assert ids <= visible


# --------------------------------------------------------------------------- search table


def partition_rows(run) -> list[tuple[int, int]]:
    """(feature id, cluster) of a run's partition in physical (heap) order."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT feature_id, cluster FROM {clustering.partition_name(run.pk)} ORDER BY ctid"
        )
        return cursor.fetchall()


def test_a_switch_writes_the_run_in_cluster_order_and_drops_the_old_partition(catalogue):
    model, garments, vectors, centres = catalogue
    old_run = model.cluster_runs.get(active=True)
    feature_ids = np.asarray(
        [GarmentFeature.objects.get(model=model, garment=g).pk for g in garments], dtype=np.int64
    )
    # Interleaved labels: arrival order is not cluster order.
    labels = np.asarray([i % 3 for i in range(len(garments))], dtype=np.int64)
    new_run = add_cluster_run(
        model, centres, {g.pk: int(label) for g, label in zip(garments, labels, strict=True)}
    )
    rows = partition_rows(new_run)
    assert len(rows) == len(garments)
    clusters = [cluster for _, cluster in rows]
    assert clusters == sorted(clusters)
    assert dict(rows) == dict(zip(feature_ids.tolist(), labels.tolist(), strict=True))
    assert clustering.partition_run_ids() == [new_run.pk]
    assert not SearchRow.objects.filter(run_id=old_run.pk).exists()


def test_vectors_indexed_after_the_fit_get_their_nearest_centroid_at_the_switch(catalogue):
    """switch_run is told the labels of the vectors the fit read; a vector stored since then
    goes into the new partition too, labelled by its nearest centroid."""
    model, garments, vectors, centres = catalogue
    late = GarmentFactory(category=garments[0].category)
    add_vectors(model, [late], (centres[2] + 0.01)[None, :])
    run = add_cluster_run(model, centres, {g.pk: lab for g, lab in labels_of(garments).items()})
    late_feature = GarmentFeature.objects.get(model=model, garment=late)
    assert SearchRow.objects.get(run_id=run.pk, feature_id=late_feature.pk).cluster == 2
    result = search.search_vectors(fused=centres[2] + 0.01, model=model, top=1)
    assert result.hits[0].garment_id == late.pk


def labels_of(garments) -> dict:
    """The catalogue fixture's labels: 3 garments in cluster 0, then 30 and 30."""
    return {g: 0 if i < 3 else 1 if i < 33 else 2 for i, g in enumerate(garments)}


def test_a_garment_indexed_between_runs_is_searchable_at_once(catalogue):
    """store_garment_features appends the vector to the active runs' partitions (fused and
    deep), labelled by nearest centroid; re-indexing replaces the row; no K-means needed."""
    model, garments, vectors, centres = catalogue
    deep_run = add_cluster_run(
        model, centres[:, :512].copy(), {g.pk: lab for g, lab in labels_of(garments).items()},
        space="deep",
    )  # fmt: skip
    fused_run = model.cluster_runs.get(active=True, space="fused")
    garment = GarmentFactory()
    query = (centres[1] + 0.002).astype(np.float32)
    indexing.store_garment_features(model=model, garment_ids=[garment.pk], fused=query[None, :])
    feature = GarmentFeature.objects.get(model=model, garment=garment)
    rows = dict(SearchRow.objects.filter(feature=feature).values_list("run_id", "cluster"))
    assert rows == {fused_run.pk: 1, deep_run.pk: 1}
    for mode in ("fused", "deep"):
        result = search.search_vectors(fused=query, model=model, top=3, mode=mode)
        assert result.hits[0].garment_id == garment.pk
        assert result.hits[0].distance == pytest.approx(0.0, abs=1e-5)
    # Re-indexed with another image: moves to the other cluster, one row per run.
    moved = (centres[2] + 0.002).astype(np.float32)
    indexing.store_garment_features(model=model, garment_ids=[garment.pk], fused=moved[None, :])
    rows = dict(SearchRow.objects.filter(feature=feature).values_list("run_id", "cluster"))
    assert rows == {fused_run.pk: 2, deep_run.pk: 2}
    assert search.search_vectors(fused=moved, model=model, top=1).hits[0].garment_id == garment.pk


def test_deleting_a_garment_removes_its_search_rows(catalogue):
    model, garments, _, _ = catalogue
    feature = GarmentFeature.objects.get(model=model, garment=garments[5])
    assert SearchRow.objects.filter(feature=feature).exists()
    garments[5].delete()
    assert not SearchRow.objects.filter(feature_id=feature.pk).exists()


def test_half_precision_scan_with_exact_rerank_equals_the_exact_in_cluster_ranking(db):
    """One dense cluster of near-equidistant vectors (small gaps between neighbours): the
    hits, their order and their distances equal a float64 brute force over the cluster."""
    rng = np.random.default_rng(5)
    model = FeatureModelFactory()
    centre = np.zeros(DIM, np.float32)
    centre[0] = 1.0
    pts = blob(rng, centre, 400, spread=0.02)
    garments = [GarmentFactory() for _ in range(len(pts))]
    add_vectors(model, garments, pts)
    far = np.zeros((1, DIM), np.float32)
    far[0, 1] = 5.0
    add_cluster_run(model, np.vstack([centre[None, :], far]), {g.pk: 0 for g in garments})
    for j in range(0, 400, 37):
        query = pts[j] + rng.normal(0, 0.01, DIM).astype(np.float32)
        result = search.search_vectors(fused=query, model=model, top=20)
        exact = np.linalg.norm(pts.astype(np.float64) - query.astype(np.float64), axis=1)
        order = np.argsort(exact)[:20]
        assert [h.garment_id for h in result.hits] == [garments[i].pk for i in order]
        assert [h.distance for h in result.hits] == pytest.approx(exact[order].tolist(), abs=1e-5)


def test_hidden_candidates_widen_the_candidate_list_until_n_are_visible(db):
    """The nearest 150 garments of the only big cluster are hidden (inactive category): the
    first candidate lists hold none that a shopper may see; the search widens the list (not
    the clusters) and returns the nearest visible ones, exactly ranked."""
    rng = np.random.default_rng(6)
    model = FeatureModelFactory()
    hidden, shown = CategoryFactory(name="Hidden", active=False), CategoryFactory(name="Shown")
    centre = np.zeros(DIM, np.float32)
    centre[0] = 1.0
    near = blob(rng, centre, 150, spread=0.01)
    further = blob(rng, centre * 1.2, 100, spread=0.01)
    garments = [GarmentFactory(category=hidden) for _ in near]
    garments += [GarmentFactory(category=shown) for _ in further]
    pts = np.vstack([near, further])
    add_vectors(model, garments, pts)
    other = np.zeros((1, DIM), np.float32)
    other[0, 1] = 5.0
    add_cluster_run(model, np.vstack([centre[None, :], other]), {g.pk: 0 for g in garments})
    result = search.search_vectors(fused=centre, model=model, top=10)
    assert result.clusters == [0]
    exact = np.linalg.norm(further.astype(np.float64) - centre, axis=1)
    assert [h.garment_id for h in result.hits] == [
        garments[150 + i].pk for i in np.argsort(exact)[:10]
    ]
    staff = search.search_vectors(fused=centre, model=model, top=10, include_hidden=True)
    assert {h.garment_id for h in staff.hits} <= {g.pk for g in garments[:150]}


def test_the_search_table_sql_names_the_models_tables():
    from retrieval.models import Category, ClusterCentroid, ClusterRun, Garment
    from retrieval.search import table as searchtable

    assert SearchRow._meta.db_table == searchtable.SEARCH_TABLE
    assert GarmentFeature._meta.db_table == searchtable.FEATURE_TABLE
    assert ClusterCentroid._meta.db_table == searchtable.CENTROID_TABLE
    assert ClusterRun._meta.db_table == searchtable.RUN_TABLE
    assert Garment._meta.db_table == searchtable.GARMENT_TABLE
    assert Category._meta.db_table == searchtable.CATEGORY_TABLE


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_migration_0003_fills_the_active_runs_partitions_from_the_old_labels():
    """An install at 0002 (labels on GarmentFeature) migrates to the search table: the active
    runs' partitions hold every vector with its old label (nearest centroid where it had
    none), in cluster order, and clustered search works right after."""
    from django.db.migrations.executor import MigrationExecutor

    before = [("retrieval", "0002_fused_storage_plain")]
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    try:
        old = MigrationExecutor(connection).loader.project_state(before).apps
        category = old.get_model("retrieval", "Category").objects.create(name="Tops", slug="tops")
        model = old.get_model("retrieval", "FeatureModel").objects.create(
            name="m", backbone="efficientnet_lite0", backbone_dim=1280, active=True
        )
        runs = {
            space: old.get_model("retrieval", "ClusterRun").objects.create(
                model=model, space=space, k=3, active=True
            )
            for space in ("fused", "deep")
        }
        centres = np.eye(3, DIM, dtype=np.float32)
        for space, dims in (("fused", DIM), ("deep", 512)):
            for label in range(3):
                old.get_model("retrieval", "ClusterCentroid").objects.create(
                    run=runs[space], label=label, centroid=centres[label, :dims]
                )
        rng = np.random.default_rng(3)
        garments, labels = [], []
        for i in range(12):
            garment = old.get_model("retrieval", "Garment").objects.create(
                sku=f"M{i}", title="t", category=category, image="x.jpg", status="ready"
            )
            vector = centres[i % 3] + rng.normal(0, 0.01, DIM).astype(np.float32)
            label = None if i == 11 else i % 3  # indexed after the last K-means: no label
            old.get_model("retrieval", "GarmentFeature").objects.create(
                garment=garment, model=model, deep=vector[:512], fused=vector,
                cluster=label, deep_cluster=label,
            )  # fmt: skip
            garments.append(garment.pk)
            labels.append(i % 3)
        MigrationExecutor(connection).migrate([("retrieval", "0003_searchrow")])

        from retrieval.models import FeatureModel

        for space in ("fused", "deep"):
            rows = partition_rows(runs[space])
            assert len(rows) == 12
            assert [cluster for _, cluster in rows] == sorted(cluster for _, cluster in rows)
            by_garment = dict(
                GarmentFeature.objects.filter(model_id=model.pk).values_list("id", "garment_id")
            )
            assert {by_garment[f]: c for f, c in rows} == dict(zip(garments, labels, strict=True))
        # The later migrations (the ORM's FeatureModel has their columns), as an upgrade runs.
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())
        result = search.search_vectors(
            fused=centres[2], model=FeatureModel.objects.get(pk=model.pk), top=4
        )
        assert result.clusters == [2]
        assert {h.garment_id for h in result.hits} == {garments[i] for i in (2, 5, 8, 11)}
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())


# --------------------------------------------------------------------------- category re-rank


def rerank_catalogue():
    """Two clusters, X (near the query) and Y, of 20 garments each, Tops and Shoes alternating;
    run A labels them as they lie, run B (not active) the other way round, so a search through
    B looks in Y for a query near X: each answer shows which run it read."""
    rng = np.random.default_rng(7)
    model = FeatureModelFactory(classes=["Shoes", "Tops"])
    tops, shoes = CategoryFactory(name="Tops"), CategoryFactory(name="Shoes")
    centres = np.eye(2, DIM, dtype=np.float32)
    garments, vectors, labels = [], [], []
    for label in (0, 1):
        for i, point in enumerate(blob(rng, centres[label], 20)):
            garments.append(GarmentFactory(category=tops if i % 2 else shoes))
            vectors.append(point)
            labels.append(label)
    add_vectors(model, garments, np.vstack(vectors))
    run_b = add_cluster_run(
        model, centres, {g.pk: 1 - lab for g, lab in zip(garments, labels, strict=True)}
    )
    run_a = add_cluster_run(
        model, centres, {g.pk: lab for g, lab in zip(garments, labels, strict=True)}
    )
    feature_ids = np.asarray(
        [GarmentFeature.objects.get(model=model, garment=g).pk for g in garments], dtype=np.int64
    )
    return model, garments, centres, tops, run_a, run_b, feature_ids, 1 - np.asarray(labels)


@pytest.mark.django_db(transaction=True)
def test_category_rerank_reads_one_snapshot_across_a_kmeans_switch(monkeypatch):
    """A K-means switch committed (from another connection) between the re-rank's plain
    search and its category search is not seen: the whole answer comes from the old run,
    equal to the answer before the switch; the next search reads the new run."""
    from retrieval.search import rerank

    model, garments, centres, tops, run_a, run_b, feature_ids, labels_b = rerank_catalogue()
    query = centres[0] + 0.01
    probs = np.asarray([0.1, 0.9], np.float32)  # Tops

    def reranked():
        result = rerank.search_reranked(fused=query, probs=probs, model=model, top=5)
        return [h.garment_id for h in result.hits]

    before = reranked()
    near_tops = {g.pk for g in garments[:20] if g.category_id == tops.pk}
    assert set(before) <= near_tops and len(before) == 5

    switched = threading.Event()
    original_drop = clustering.drop_stale_partitions
    original_search = search.search_vectors
    calls = []

    def drop_after_signal():
        switched.set()  # the switch has committed; its drop waits for the searches in flight
        return original_drop()

    def switch():
        try:
            clustering.switch_run(run=run_b, feature_ids=feature_ids, labels=labels_b)
        finally:
            switched.set()
            connection.close()

    def search_then_switch(**kwargs):
        result = original_search(**kwargs)
        calls.append(kwargs.get("category_id"))
        if len(calls) == 1:  # between the plain search and the category search
            switcher.start()
            assert switched.wait(60)
        return result

    switcher = threading.Thread(target=switch)
    monkeypatch.setattr(clustering, "drop_stale_partitions", drop_after_signal)
    monkeypatch.setattr(search, "search_vectors", search_then_switch)
    during = reranked()
    switcher.join(60)
    assert not switcher.is_alive()
    assert calls == [None, tops.pk]
    run_b.refresh_from_db()
    assert run_b.active  # the switch did commit mid-search
    assert during == before
    # Searches after the switch read run B: they look in Y (the test sees the switch).
    monkeypatch.setattr(search, "search_vectors", original_search)
    after = reranked()
    assert set(after) <= {g.pk for g in garments[20:] if g.category_id == tops.pk}


@pytest.mark.django_db(transaction=True)
def test_category_rerank_runs_in_one_repeatable_read_transaction():
    from django.test.utils import CaptureQueriesContext

    from retrieval.search import rerank

    model, garments, centres, *_ = rerank_catalogue()
    probs = np.asarray([0.1, 0.9], np.float32)
    with CaptureQueriesContext(connection) as queries:
        result = rerank.search_reranked(fused=centres[0], probs=probs, model=model, top=5)
    assert len(result.hits) == 5
    statements = [q["sql"] for q in queries.captured_queries]
    # One transaction whose first statement sets the isolation level.
    assert statements[:2] == [
        "BEGIN",
        "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY",
    ]
    assert statements[-1] == "COMMIT"
    assert statements.count("BEGIN") == 1 and statements.count("COMMIT") == 1
    assert sum("SET TRANSACTION" in sql for sql in statements) == 1
    assert sum("retrieval_clustercentroid" in sql for sql in statements) == 2  # two searches
    assert not connection.in_atomic_block  # committed: nothing left open


def test_category_rerank_inside_a_callers_transaction(db):
    """Inside an atomic block (tests, ATOMIC_REQUESTS) the isolation level cannot be set: the
    re-rank runs in the caller's transaction and leaves it usable."""
    from django.db import transaction

    from retrieval.search import rerank

    model, garments, centres, tops, *_ = rerank_catalogue()
    probs = np.asarray([0.1, 0.9], np.float32)
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        result = rerank.search_reranked(fused=centres[0], probs=probs, model=model, top=5)
        assert {
            g.category_id
            for g in GarmentFactory._meta.model.objects.filter(
                pk__in=[h.garment_id for h in result.hits]
            )
        } == {tops.pk}
        with connection.cursor() as cursor:
            cursor.execute("SHOW transaction_read_only")
            assert cursor.fetchone()[0] == "off"
