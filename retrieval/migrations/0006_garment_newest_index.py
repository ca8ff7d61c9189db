"""An index in the garments' list order (newest first), built CONCURRENTLY: writes to garments
go on while it builds (a few seconds at 1M rows)."""

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("retrieval", "0005_featuremodel_vectors_key"),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="garment",
            index=models.Index(fields=["-created_at", "-id"], name="retrieval_garment_newest_idx"),
        ),
    ]
