"""The catalogue (categories, garments), their vectors, and the versioned artifacts of the method.

Vectors live in :class:`GarmentFeature`, one row per (garment, feature model): a new model
is indexed on the side while search keeps reading the active model's rows, then the switch
is one UPDATE of ``FeatureModel.active``. What a clustered search scans lives in
:class:`SearchRow`: one partition per K-means run, written in cluster order.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.contrib.postgres.indexes import GinIndex
from django.contrib.postgres.search import SearchVectorField
from django.db import models
from django.db.models import Q
from django.utils.text import slugify
from pgvector.django import HalfVectorField, VectorField

from retrieval.spec import COLOUR_DIM, DEEP_DIM, FUSED_DIM, NUM_POSITIONS

# Version of what retrieval.features computes per image (preprocessing, colour reading):
# bump it when that changes, so stale cached CNN features are recognisable and recomputed.
FEATURE_VERSION = 1


class Category(models.Model):
    """A catalogue category (articleType in the sample catalogue); curated by staff."""

    name = models.CharField(max_length=100, unique=True)
    slug = models.SlugField(max_length=120, unique=True)
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children"
    )
    active = models.BooleanField(
        default=True, help_text="Inactive categories are hidden from shoppers and from training."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name_plural = "categories"

    def __str__(self) -> str:
        return self.name

    def save(self, *args, **kwargs) -> None:
        if not self.slug:
            self.slug = unique_slug(self.name, exclude_pk=self.pk)
        super().save(*args, **kwargs)


def unique_slug(name: str, *, exclude_pk: int | None = None) -> str:
    """A slug for ``name`` not yet taken by another category ("shirts", "shirts-2", ...)."""
    base = slugify(name)[:100] or "category"
    slug, n = base, 1
    taken = Category.objects.exclude(pk=exclude_pk)
    while taken.filter(slug=slug).exists():
        n += 1
        slug = f"{base}-{n}"
    return slug


class Garment(models.Model):
    """A product in the catalogue; its image becomes searchable once ``status`` is ready."""

    # What staff write about a garment: the admin's form and the API's reads and writes list it.
    DESCRIPTION_FIELDS = (
        *("sku", "title", "description", "category", "colour"),
        *("gender", "season", "usage", "year"),
    )

    class Status(models.TextChoices):
        PENDING = "pending", "pending"
        PROCESSING = "processing", "processing"
        READY = "ready", "ready"
        FAILED = "failed", "failed"

    sku = models.CharField(max_length=64, unique=True)
    title = models.CharField(max_length=255)
    description = models.TextField(blank=True)
    category = models.ForeignKey(Category, on_delete=models.PROTECT, related_name="garments")
    colour = models.CharField(
        max_length=50, blank=True, db_index=True, help_text="Colour name, e.g. Navy Blue."
    )
    # Shopper filters (the catalogue's gender, season, usage and year columns): real columns so
    # that searches filter on them in SQL, inside the clustered scan (retrieval.search.filters).
    gender = models.CharField(
        max_length=20, blank=True, db_index=True, help_text="Men, Women, Boys, Girls, Unisex."
    )
    season = models.CharField(
        max_length=20, blank=True, db_index=True, help_text="Spring, Summer, Fall, Winter."
    )
    usage = models.CharField(
        max_length=30, blank=True, db_index=True, help_text="Casual, Formal, Sports, Ethnic..."
    )
    year = models.PositiveSmallIntegerField(
        null=True, blank=True, db_index=True, help_text="Catalogue year (season's collection)."
    )
    image = models.FileField(upload_to="garments/%Y/%m/", max_length=255)
    attributes = models.JSONField(
        default=dict, blank=True, help_text="The catalogue row's other columns, as imported."
    )
    # Keyword search document: written by a database trigger from the title, the category's
    # name, the colour and the attributes (migration 0007), so a category rename or an UPDATE
    # that bypasses save() keeps it right. Whatever Django writes here is replaced.
    search_vector = SearchVectorField(null=True, editable=False)
    status = models.CharField(
        max_length=12, choices=Status.choices, default=Status.PENDING, db_index=True
    )
    error = models.TextField(blank=True)
    # Lease of the indexing task working on the garment: one worker at a time, and a task
    # redelivered after its worker died (same task id) may take its garments back at once.
    claimed_by = models.CharField(max_length=64, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    import_job = models.ForeignKey(
        "ImportJob", null=True, blank=True, on_delete=models.SET_NULL, related_name="garments"
    )
    # Fingerprints of the uploaded image's decoded pixels (retrieval.images): the exact one
    # refuses a second garment with the same pixels; the perceptual hash (256-bit pHash, 32
    # bytes) and the colour thumbnail (16x16 RGB, 768 bytes) confirm near-duplicates found by
    # vector distance (retrieval.search.duplicates).
    pixel_hash = models.CharField(max_length=64, blank=True, editable=False)
    phash = models.BinaryField(null=True, blank=True, editable=False)
    thumbnail = models.BinaryField(null=True, blank=True, editable=False)
    # Garments staff confirmed as one product share this: the smallest id of the group.
    # Search shows one garment per group (the best-scored one).
    product_group = models.BigIntegerField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            # Exact-duplicate lookups on every upload and import row (no scan at 1M rows).
            models.Index(
                fields=["pixel_hash"],
                name="retrieval_garment_pixels_idx",
                condition=~Q(pixel_hash=""),
            ),
            models.Index(
                fields=["product_group"],
                name="retrieval_garment_group_idx",
                condition=Q(product_group__isnull=False),
            ),
            models.Index(fields=["category", "status"]),
            models.Index(fields=["status", "updated_at"]),
            # By stored file name: before a replaced or deleted garment's file is deleted, a
            # check that no other row names it; prune_media's lookups (no table scan at 1M).
            models.Index(fields=["image"], name="retrieval_garment_image_idx"),
            # The list order (newest first): a page reads its rows from this index instead
            # of sorting every visible garment (API list, category pages; migration 0006).
            models.Index(fields=["-created_at", "-id"], name="retrieval_garment_newest_idx"),
            # Keyword search (retrieval.search.keyword): tsquery @@ search_vector.
            GinIndex(fields=["search_vector"], name="retrieval_garment_search_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.sku} {self.title}"

    def get_absolute_url(self) -> str:
        from django.urls import reverse

        return reverse("garment-detail", args=[self.pk])


class FeatureModel(models.Model):
    """One versioned feature extractor: a backbone plus a trained head and the fusion knobs.

    At most one is active; every stored vector names the model that produced it.
    """

    class Status(models.TextChoices):
        TRAINING = "training", "training"
        INDEXING = "indexing", "indexing"
        READY = "ready", "ready"
        FAILED = "failed", "failed"

    name = models.CharField(max_length=100, unique=True)
    backbone = models.CharField(max_length=40)
    backbone_dim = models.PositiveIntegerField(help_text="Length of the pooled backbone feature.")
    head_file = models.CharField(
        max_length=255, blank=True, help_text="Head weights, relative to RETRIEVAL_MODELS_DIR."
    )
    classes = models.JSONField(default=list, blank=True, help_text="Category names, head order.")
    colour_variant = models.CharField(max_length=20, default="lab_mean")
    colour_weight = models.FloatField(default=0.6)
    normalize_deep = models.BooleanField(
        default=True, help_text="L2-normalise the deep part before fusing (departure from paper)."
    )
    metrics = models.JSONField(default=dict, blank=True)
    split = models.JSONField(
        default=dict, blank=True, help_text="Seed and held-out test garment ids (never trained on)."
    )
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.TRAINING)
    progress = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    active = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    activated_at = models.DateTimeField(null=True, blank=True)
    # What the model's stored vectors were computed with (head bytes, colour knobs, feature
    # version; training.vectors_key), set by a full recompute. A switch back to the model
    # (training.reindex_and_activate) recomputes only missing or outdated vectors while it
    # still matches, and all of them once a knob or the head changed.
    vectors_key = models.CharField(max_length=64, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["active"], condition=Q(active=True), name="one_active_feature_model"
            )
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def head_path(self):
        return settings.RETRIEVAL_MODELS_DIR / self.head_file if self.head_file else None


class BackboneFeature(models.Model):
    """What the CNN saw in one garment's image, under one backbone: the cache heads train on.

    ``pooled`` is the backbone's pooled feature (float32, D = 1280 or 2048), ``positions`` the 10
    strongest cells of the last conv map (row-major 7x7 indices, strongest first) and ``rgb`` the
    raw RGB (0..255) of the 7x7 average-pooled image at those cells, 10x3 flattened. From these a
    new head or another colour variant recomputes every vector without running the CNN again.
    """

    garment = models.ForeignKey(Garment, on_delete=models.CASCADE, related_name="backbone_features")
    backbone = models.CharField(max_length=40)
    version = models.PositiveSmallIntegerField(
        help_text="FEATURE_VERSION of the code that wrote the row."
    )
    image_name = models.CharField(max_length=255, help_text="The image file the row was made from.")
    pooled = VectorField()
    positions = ArrayField(models.PositiveSmallIntegerField(), size=NUM_POSITIONS)
    rgb = ArrayField(models.FloatField(), size=COLOUR_DIM)
    created_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["garment", "backbone"], name="one_cnn_pass_per_backbone"
            )
        ]

    def __str__(self) -> str:
        return f"{self.backbone} features of garment {self.garment_id}"


class GarmentFeature(models.Model):
    """The searchable vectors of one garment under one feature model (backbone + trained head).

    Kept slim (no CNN cache here) so the exact (unclustered) scan and the re-ranking of a
    clustered search read as few pages as possible. K-means labels are not stored here but in
    :class:`SearchRow`, per run: a new run writes its own rows instead of updating these.
    """

    garment = models.ForeignKey(Garment, on_delete=models.CASCADE, related_name="features")
    model = models.ForeignKey(FeatureModel, on_delete=models.CASCADE, related_name="features")
    deep = VectorField(dimensions=DEEP_DIM)
    fused = VectorField(dimensions=FUSED_DIM)
    created_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["garment", "model"], name="one_feature_per_model")
        ]

    def __str__(self) -> str:
        return f"vectors of garment {self.garment_id} under model {self.model_id}"


class ClusterRun(models.Model):
    """A K-means fit over one feature model's vectors (the paper's cluster filter).

    ``space`` "fused" clusters the 542-d fused vectors (the paper's method); "deep" clusters
    the 512-d deep part alone, so the deep-only baseline is searched the way the paper
    searched it rather than through clusters shaped by colour.
    """

    class Space(models.TextChoices):
        FUSED = "fused", "fused"
        DEEP = "deep", "deep"

    model = models.ForeignKey(FeatureModel, on_delete=models.CASCADE, related_name="cluster_runs")
    space = models.CharField(max_length=8, choices=Space.choices, default=Space.FUSED)
    k = models.PositiveIntegerField()
    n_samples = models.PositiveIntegerField(default=0)
    sizes = models.JSONField(default=list, blank=True)
    inertia = models.FloatField(null=True, blank=True)
    algorithm = models.CharField(max_length=40, blank=True)
    seconds = models.FloatField(null=True, blank=True)
    active = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["model", "space"],
                condition=Q(active=True),
                name="one_active_cluster_run_per_model_space",
            )
        ]

    def __str__(self) -> str:
        return (
            f"K-means k={self.k} ({self.space}) on {self.model} ({self.created_at:%Y-%m-%d %H:%M})"
        )


class ClusterCentroid(models.Model):
    """One K-means centroid. In a table, so a search picks its cluster in the same SQL
    statement (the same snapshot) that ranks the garments: a run switch is atomic for it."""

    run = models.ForeignKey(ClusterRun, on_delete=models.CASCADE, related_name="centroids")
    label = models.PositiveIntegerField()
    centroid = VectorField(help_text="542 floats (fused space) or 512 (deep space).")
    size = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["run", "label"], name="one_centroid_per_label")
        ]

    def __str__(self) -> str:
        return f"centroid {self.label} of run {self.run_id}"


class SearchRow(models.Model):
    """What a clustered search scans: one row per (K-means run, garment vector).

    The table is LIST-partitioned by ``run`` (migration 0003; partitions are created, filled
    and attached by ``retrieval.search.clustering``). A run's partition is written in cluster order
    when the run is built, so the rows of one cluster sit on adjacent pages (the locality a
    ``CLUSTER`` gave, without its exclusive lock); switching runs flips ``ClusterRun.active``
    and the old run's partition is dropped afterwards. ``scan_vector`` is the run's space
    (fused 542-d, or deep 512-d for the deep-only baseline) in half precision: half the pages
    to read; searches re-rank their candidates with the float32 vectors of
    :class:`GarmentFeature`, so returned distances and order are exact (docs/benchmarks.md).
    No database foreign keys (checking them would cost a lookup per row when a run of a
    million rows is written); Django's delete cascade removes the rows of deleted vectors.
    """

    pk = models.CompositePrimaryKey("feature_id", "run_id")
    # The primary key (feature_id first) finds a vector's rows when it is deleted or
    # re-indexed; run_id is the partition key, so no index of its own.
    feature = models.ForeignKey(
        GarmentFeature,
        on_delete=models.CASCADE,
        db_constraint=False,
        db_index=False,
        related_name="+",
    )
    run = models.ForeignKey(
        ClusterRun, on_delete=models.CASCADE, db_constraint=False, db_index=False, related_name="+"
    )
    cluster = models.IntegerField(help_text="K-means label of the vector in this run.")
    scan_vector = HalfVectorField(help_text="The run's space, half precision, for the scan.")

    class Meta:
        indexes = [models.Index(fields=["cluster"], name="retrieval_searchrow_cluster")]

    def __str__(self) -> str:
        return f"vector {self.feature_id} in cluster {self.cluster} of run {self.run_id}"


class EvaluationReport(models.Model):
    """Retrieval quality and speed of a model on the catalogue (the paper's tables and figures)."""

    class Status(models.TextChoices):
        RUNNING = "running", "running"
        DONE = "done", "done"
        FAILED = "failed", "failed"

    model = models.ForeignKey(
        FeatureModel, null=True, blank=True, on_delete=models.SET_NULL, related_name="reports"
    )
    parameters = models.JSONField(default=dict, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.RUNNING)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"Evaluation {self.pk} ({self.created_at:%Y-%m-%d %H:%M})"


class ImportJob(models.Model):
    """One bulk catalogue import (zip or folder with styles.csv + images/)."""

    class Status(models.TextChoices):
        PENDING = "pending", "pending"
        RUNNING = "running", "running"
        DONE = "done", "done"
        FAILED = "failed", "failed"

    source = models.CharField(max_length=500, help_text="Path or uploaded file name.")
    upload = models.FileField(upload_to="imports/%Y/%m/", blank=True, max_length=255)
    category_field = models.CharField(max_length=40, default="articleType")
    limit = models.PositiveIntegerField(null=True, blank=True)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.PENDING)
    rows = models.PositiveIntegerField(default=0)
    created = models.PositiveIntegerField(default=0)
    updated = models.PositiveIntegerField(default=0)
    unchanged = models.PositiveIntegerField(default=0)
    problems = models.JSONField(default=list, blank=True, help_text="[{row, sku, file, reason}]")
    error = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Lease of the run working on the job (its task id, or host:pid of manage.py), renewed by
    # every batch: a run that died leaves it to age past RETRIEVAL_STUCK_MINUTES, and the sweep
    # (catalogue.rescue_stalled_imports) then queues the job again or marks it failed.
    claimed_by = models.CharField(max_length=64, blank=True, editable=False)
    heartbeat_at = models.DateTimeField(null=True, blank=True, editable=False)
    # Runs started (the first, redeliveries, rescues): the sweep stops re-queueing a job whose
    # runs keep dying (a row that kills the worker) and marks it failed instead.
    attempts = models.PositiveSmallIntegerField(default=0, editable=False)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"import {self.pk} of {self.source}"


class ApiToken(models.Model):
    """An API token (``Authorization: Token <key>``), stored as the SHA-256 digest of its key.

    The key itself is shown once, when it is issued (retrieval.tokens.issue_token), and never
    stored: a copy of the database or a look at the admin gives no usable token. A plain,
    unsalted SHA-256 is enough for keys of 256 random bits (nothing to guess from a list, unlike
    a password). ``prefix`` (the key's first characters) tells tokens apart in the admin and
    narrows the lookup; the digest is compared in constant time.
    """

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    prefix = models.CharField(max_length=8, db_index=True, editable=False)
    digest = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    # Updated at most once a minute per token (retrieval.tokens.authenticate_key), not on every
    # request.
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"


class ExamplePhoto(models.Model):
    """A labelled photo that trains the model and is never shown: not a garment, so no shop
    page, search result or API response can name it (issue #14, training-only photos).

    ``role`` comes from a hash of the sender (retrieval.catalogue.examples.example_role):
    ``holdout`` photos are evaluation queries only, never training rows, and all the photos of
    one sender are on one side.
    """

    class Role(models.TextChoices):
        TRAIN = "train", "trains the model"
        HOLDOUT = "holdout", "held out: evaluation only"

    key = models.CharField(
        max_length=64, unique=True, help_text="The source's id (re-imports match on it)."
    )
    image = models.ImageField(upload_to="examples/", max_length=255)
    category = models.ForeignKey(Category, on_delete=models.PROTECT, related_name="example_photos")
    sender = models.CharField(
        max_length=100, blank=True, help_text="Who took the photo: the split is by sender."
    )
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.TRAIN)
    source = models.CharField(max_length=255, blank=True, help_text="The file it came from.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["key"]
        indexes = [models.Index(fields=["role", "category"])]

    def __str__(self) -> str:
        return f"example {self.key} ({self.category_id}, {self.role})"


class ExampleFeature(models.Model):
    """The CNN cache of an example photo under one backbone (like :class:`BackboneFeature`):
    ``pooled`` (float32, D = the backbone's pooled size) is what the head trains on."""

    photo = models.ForeignKey(ExamplePhoto, on_delete=models.CASCADE, related_name="features")
    backbone = models.CharField(max_length=40)
    version = models.PositiveSmallIntegerField(
        help_text="FEATURE_VERSION of the code that wrote the row."
    )
    pooled = VectorField()
    created_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["photo", "backbone"], name="one_cnn_pass_per_example_backbone"
            )
        ]

    def __str__(self) -> str:
        return f"{self.backbone} features of example {self.photo_id}"


class NearDuplicate(models.Model):
    """A garment whose photo looks like an older garment's (resized, re-compressed, lightly
    cropped or brightened): flagged by indexing (retrieval.search.duplicates), reviewed by
    staff. "Same product" merges the two into one product group (search shows one of them);
    "different products" keeps both and the pair is never flagged again."""

    class Status(models.TextChoices):
        OPEN = "open", "to review"
        SAME = "same", "same product"
        DIFFERENT = "different", "different products"

    garment = models.ForeignKey(Garment, on_delete=models.CASCADE, related_name="duplicate_flags")
    original = models.ForeignKey(Garment, on_delete=models.CASCADE, related_name="+")
    phash_distance = models.PositiveSmallIntegerField(
        help_text="Bits that differ between the two perceptual hashes (of 256)."
    )
    fused_distance = models.FloatField(help_text="L2 distance of the two fused vectors.")
    photo_distance = models.FloatField(
        help_text="1 - the correlation of the two photos' colour thumbnails (0 = the same picture)."
    )
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.OPEN)
    created_at = models.DateTimeField(auto_now_add=True)
    reviewed_at = models.DateTimeField(null=True, blank=True)
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "possible duplicate"
        constraints = [
            models.UniqueConstraint(fields=["garment", "original"], name="one_flag_per_pair"),
            models.CheckConstraint(
                condition=~Q(garment=models.F("original")), name="flag_two_garments"
            ),
        ]
        indexes = [models.Index(fields=["status", "-created_at"], name="retrieval_neardup_open")]

    def __str__(self) -> str:
        return f"garment {self.garment_id} possibly duplicates {self.original_id}"


class SearchLog(models.Model):
    """One search by photo (shop or API), for the search analytics (retrieval.analytics).

    Nothing identifying the shopper is kept (no user, IP or session): the access log already
    has what the operator chose to keep. The photo itself only with RETRIEVAL_SEARCH_LOG_PHOTOS.
    The id is made when the search runs (a UUID) so the answer can name it before the row is
    written (after the response); clicks on the results name it back.
    """

    class Channel(models.TextChoices):
        WEB = "web", "shop"
        API = "api", "API"

    id = models.UUIDField(primary_key=True, editable=False)
    created_at = models.DateTimeField()
    channel = models.CharField(max_length=3, choices=Channel.choices)
    mode = models.CharField(max_length=8)
    top = models.PositiveSmallIntegerField()
    filters = models.JSONField(default=dict, blank=True, help_text='e.g. {"category": slug}')
    latency_ms = models.FloatField(help_text="Server time of the search itself.")
    garment_ids = ArrayField(models.IntegerField(), default=list, help_text="In rank order.")
    predicted_category = models.CharField(max_length=100, blank=True)
    confidence = models.FloatField(null=True, blank=True)
    model = models.CharField(max_length=100, blank=True)
    photo = models.CharField(max_length=255, blank=True, help_text="Kept query photo, if any.")
    clicks = models.PositiveSmallIntegerField(default=0)
    first_click_rank = models.PositiveSmallIntegerField(
        null=True, blank=True, help_text="Best (lowest) rank clicked; empty: no click."
    )

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "search by photo"
        verbose_name_plural = "searches by photo"
        indexes = [
            # The roll-up and the open hour read a time range; retention the oldest rows.
            models.Index(fields=["created_at"], name="retrieval_searchlog_time"),
        ]

    def __str__(self) -> str:
        return f"search {self.id} ({self.created_at:%Y-%m-%d %H:%M})"


class SearchClick(models.Model):
    """A shopper opened a result of a search (the shop's result link, or an API garment read
    naming the search): one row per (search, garment), ``rank`` 1-based."""

    search = models.ForeignKey(SearchLog, on_delete=models.CASCADE, related_name="click_rows")
    garment_id = models.IntegerField()
    rank = models.PositiveSmallIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["search", "garment_id"], name="one_click_per_result")
        ]
        # The roll-up finds the closed hours whose searches got a click since its last run.
        indexes = [models.Index(fields=["created_at"], name="retrieval_searchclick_time")]

    def __str__(self) -> str:
        return f"click on rank {self.rank} of search {self.search_id}"


class SearchHour(models.Model):
    """The hourly roll-up of the search log: one row per closed hour (UTC) and predicted
    category, computed from the raw rows by retrieval.analytics.rollup (a beat task; an hour
    is recomputed whole, so again and again gives the same row). The dashboard, its CSV and
    the staff API read these plus the raw rows of the hours not rolled up yet (the open hour).

    ``latency_hist``: the searches' latencies counted in the fixed buckets of
    ``retrieval.analytics.rollup.BUCKET_EDGES_MS``, as little-endian int32 (bytes, not an
    array column: summing 26k histograms is a numpy sum of one buffer, not 3M SQL rows).
    ``slowest_ids`` / ``slowest_ms``: the hour's slowest searches of the category, slowest
    first (at most retrieval.analytics.rollup.SLOWEST).
    """

    hour = models.DateTimeField(help_text="Start of the hour (UTC).")
    predicted_category = models.CharField(max_length=100, blank=True)
    searches = models.PositiveIntegerField()
    clicked = models.PositiveIntegerField(help_text="Searches with any click.")
    clicked_at_1 = models.PositiveIntegerField(help_text="Searches with a click on result 1.")
    clicked_at_5 = models.PositiveIntegerField(help_text="... on one of the first 5.")
    clicked_at_10 = models.PositiveIntegerField(help_text="... on one of the first 10.")
    low_confidence = models.PositiveIntegerField(
        help_text="Searches below RETRIEVAL_SEARCH_LOW_CONFIDENCE (as set when computed) or "
        "without a prediction."
    )
    latency_hist = models.BinaryField()
    max_latency_ms = models.FloatField()
    slowest_ids = ArrayField(models.UUIDField(), default=list)
    slowest_ms = ArrayField(models.FloatField(), default=list)
    computed_at = models.DateTimeField()

    class Meta:
        verbose_name = "search hour (roll-up)"
        constraints = [
            models.UniqueConstraint(
                fields=["hour", "predicted_category"], name="one_rollup_per_hour_category"
            )
        ]
        indexes = [models.Index(fields=["hour"], name="retrieval_searchhour_hour")]

    def __str__(self) -> str:
        return f"{self.hour:%Y-%m-%d %H}:00 {self.predicted_category or '(none)'}"


class SearchRollupState(models.Model):
    """One row: how far the roll-up has gone. Hours before ``through`` are in
    :class:`SearchHour`; clicks recorded before ``clicks_checked`` are counted there."""

    through = models.DateTimeField(null=True)
    clicks_checked = models.DateTimeField(null=True)

    def __str__(self) -> str:
        return f"searches rolled up through {self.through}"
