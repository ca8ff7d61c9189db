"""FeatureModel.vectors_key: what a model's stored vectors were computed with.

Empty for existing models, so their first switch back recomputes every vector (as every
activation did before); see services.recompute_vectors.
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("retrieval", "0004_garment_image_index")]

    operations = [
        migrations.AddField(
            model_name="featuremodel",
            name="vectors_key",
            field=models.CharField(blank=True, editable=False, max_length=64),
        ),
    ]
