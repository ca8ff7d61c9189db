"""Keep the fused vector in the table row instead of TOAST.

pgvector stores a 542-d vector (2.2 kB) out of line by default once a row passes ~2 kB, so a
cluster scan read two relations per row. Measured (docs/benchmarks.md, 100k rows, K=141):
in-cluster exact scan p50 5.7 ms TOASTed vs 2.2 ms with PLAIN storage; at 1M rows 11.6 ms.
The deep vector stays out of line: only the deep-only baseline reads it.
"""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("retrieval", "0001_initial")]

    operations = [
        migrations.RunSQL(
            "ALTER TABLE retrieval_garmentfeature ALTER COLUMN fused SET STORAGE PLAIN",
            reverse_sql="ALTER TABLE retrieval_garmentfeature ALTER COLUMN fused SET STORAGE EXTERNAL",
        )
    ]
