"""Database helpers shared by migrations and services."""

from __future__ import annotations

from pgvector.django import VectorExtension


class PgvectorExtension(VectorExtension):
    """``CREATE EXTENSION vector``, with a clear message where the server lacks pgvector."""

    def database_forwards(self, app_label, schema_editor, from_state, to_state) -> None:
        with schema_editor.connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")
            available = cursor.fetchone() is not None
        if not available:
            from django.core.management.base import CommandError

            raise CommandError(
                "This PostgreSQL server does not have the pgvector extension. Install it "
                "(https://github.com/pgvector/pgvector#installation, e.g. the "
                "postgresql-<version>-pgvector package) and run migrate again, or unset "
                "DATABASE_URL to use the embedded PostgreSQL that ships with pgvector."
            )
        super().database_forwards(app_label, schema_editor, from_state, to_state)
