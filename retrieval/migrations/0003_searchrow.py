"""The search table: one LIST partition per K-means run, written in cluster order.

Before this migration the K-means labels were columns of ``retrieval_garmentfeature``
(``cluster``, ``deep_cluster``): a new run rewrote every row (36 s and a doubled heap at 1M
rows) and left each cluster's rows scattered over the heap, so a cluster scan read pages all
over the table (12-28 ms p50 at 1M; docs/benchmarks_search.md). Now each run gets its own
partition of ``retrieval_searchrow``, filled in cluster order when the run is built
(``retrieval.clustering``), and the switch is a flip of ``ClusterRun.active``.

Existing installs: the active runs' partitions are filled here from the old label columns
(garments without a label get their nearest centroid), in cluster order, before those
columns are dropped. This reads every vector once: minutes for a million garments (a sort
of the whole run); ``manage.py build_clusters`` afterwards is an alternative (it fits new
runs and writes new partitions).
"""

import django.db.models.deletion
import pgvector.django.halfvec
from django.db import migrations, models

TABLE = "retrieval_searchrow"

CREATE_SQL = f"""
CREATE TABLE {TABLE} (
    feature_id bigint NOT NULL,
    run_id bigint NOT NULL,
    cluster integer NOT NULL,
    scan_vector halfvec NOT NULL,
    CONSTRAINT {TABLE}_pkey PRIMARY KEY (feature_id, run_id)
) PARTITION BY LIST (run_id);
-- In-row, never TOAST: a cluster scan must not read a second relation per row (a 542-d
-- halfvec row is ~1.1 kB, under the TOAST threshold anyway; PLAIN makes it explicit and is
-- inherited by partitions made with LIKE ... INCLUDING STORAGE).
ALTER TABLE {TABLE} ALTER COLUMN scan_vector SET STORAGE PLAIN;
CREATE INDEX retrieval_searchrow_cluster ON {TABLE} (cluster);
"""


def fill_active_runs(apps, schema_editor) -> None:
    """A partition per active run, from the labels stored on the vectors (old schema)."""
    ClusterRun = apps.get_model("retrieval", "ClusterRun")
    runs = ClusterRun.objects.filter(active=True).values_list("id", "model_id", "space")
    with schema_editor.connection.cursor() as cursor:
        for run_id, model_id, space in runs:
            column, label = ("deep", "deep_cluster") if space == "deep" else ("fused", "cluster")
            part = f"{TABLE}_r{int(run_id)}"
            cursor.execute(
                f"CREATE TABLE {part} (LIKE {TABLE} INCLUDING STORAGE, "
                f"CONSTRAINT {part}_run CHECK (run_id = {int(run_id)}))"
            )
            cursor.execute(
                f"""
                INSERT INTO {part} (feature_id, run_id, cluster, scan_vector)
                SELECT f.id, %s, coalesce(f.{label}, (
                           SELECT c.label FROM retrieval_clustercentroid AS c
                           WHERE c.run_id = %s ORDER BY c.centroid <-> f.{column} LIMIT 1)),
                       f.{column}::halfvec
                FROM retrieval_garmentfeature AS f
                WHERE f.model_id = %s
                ORDER BY 3, 1
                """,
                [run_id, run_id, model_id],
            )
            cursor.execute(f"ALTER TABLE {part} ADD PRIMARY KEY (feature_id, run_id)")
            cursor.execute(f"CREATE INDEX ON {part} (cluster)")
            cursor.execute(f"ANALYZE {part}")
            cursor.execute(f"ALTER TABLE {TABLE} ATTACH PARTITION {part} FOR VALUES IN ({run_id})")


class Migration(migrations.Migration):
    dependencies = [("retrieval", "0002_fused_storage_plain")]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="SearchRow",
                    fields=[
                        (
                            "pk",
                            models.CompositePrimaryKey(
                                "feature_id",
                                "run_id",
                                blank=True,
                                editable=False,
                                primary_key=True,
                                serialize=False,
                            ),
                        ),
                        (
                            "cluster",
                            models.IntegerField(help_text="K-means label of the vector in this run."),
                        ),
                        (
                            "scan_vector",
                            pgvector.django.halfvec.HalfVectorField(
                                help_text="The run's space, half precision, for the scan."
                            ),
                        ),
                        (
                            "feature",
                            models.ForeignKey(
                                db_constraint=False,
                                db_index=False,
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="+",
                                to="retrieval.garmentfeature",
                            ),
                        ),
                        (
                            "run",
                            models.ForeignKey(
                                db_constraint=False,
                                db_index=False,
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="+",
                                to="retrieval.clusterrun",
                            ),
                        ),
                    ],
                    options={
                        "indexes": [
                            models.Index(fields=["cluster"], name="retrieval_searchrow_cluster")
                        ],
                    },
                ),
            ],
            database_operations=[
                migrations.RunSQL(CREATE_SQL, reverse_sql=f"DROP TABLE {TABLE} CASCADE"),
            ],
        ),
        migrations.RunPython(fill_active_runs, migrations.RunPython.noop),
        migrations.RemoveIndex(model_name="garmentfeature", name="retrieval_g_model_i_9ff127_idx"),
        migrations.RemoveIndex(model_name="garmentfeature", name="retrieval_g_model_i_5fcd0a_idx"),
        migrations.RemoveField(model_name="garmentfeature", name="cluster"),
        migrations.RemoveField(model_name="garmentfeature", name="deep_cluster"),
    ]
