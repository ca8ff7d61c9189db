"""API tokens stored hashed (retrieval.tokens): DRF authtoken's plain keys become digests.

Where Django REST framework's ``authtoken`` app was installed (every site before this
migration), each of its tokens is copied into ApiToken as its prefix and SHA-256 digest, with
its user and creation time, so existing clients keep working; then the plain keys are dropped
with their table (``authtoken_token``), and authtoken's migration records with it, since the
app is no longer installed (were it installed again, ``migrate`` would create an empty table).
Raw SQL: the app is gone, its models are not in the migration state.

Not reversible for the data: the plain keys no longer exist anywhere (unapplying drops the
tokens).
"""

import hashlib

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

PLAIN_TABLE = "authtoken_token"


def hash_plain_tokens(apps, schema_editor):
    connection = schema_editor.connection
    if PLAIN_TABLE not in connection.introspection.table_names():
        return  # a site that never had DRF authtoken
    table = schema_editor.quote_name(apps.get_model("retrieval", "ApiToken")._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT key, user_id, created FROM {PLAIN_TABLE}")
        rows = [
            (user_id, key[:8], hashlib.sha256(key.encode()).hexdigest(), created)
            for key, user_id, created in cursor.fetchall()
        ]
        cursor.executemany(
            f"INSERT INTO {table} (user_id, prefix, digest, created_at) VALUES (%s, %s, %s, %s)",
            rows,
        )
        cursor.execute(f"DROP TABLE {PLAIN_TABLE}")
        cursor.execute("DELETE FROM django_migrations WHERE app = 'authtoken'")


class Migration(migrations.Migration):
    dependencies = [
        ("retrieval", "0008_garment_attributes"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="ApiToken",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("prefix", models.CharField(db_index=True, editable=False, max_length=8)),
                ("digest", models.CharField(editable=False, max_length=64, unique=True)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                ("last_used_at", models.DateTimeField(blank=True, editable=False, null=True)),
                (
                    "user",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="api_tokens",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
            options={
                "verbose_name": "API token",
                "ordering": ["-created_at"],
            },
        ),
        migrations.RunPython(hash_plain_tokens, migrations.RunPython.noop),
    ]
