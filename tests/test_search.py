"""Cluster-filtered vector search on real PostgreSQL/pgvector, with hand-made vectors."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from django.db import connection

from retrieval import clustering, search
from retrieval.models import GarmentFeature
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
        search.active_model()


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
