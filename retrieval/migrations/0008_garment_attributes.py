"""Gender, season, usage and year as columns (filters), colour indexed, and the keyword search
document (a tsvector kept by triggers, GIN-indexed), backfilled from what imports stored in
``attributes``."""

import django.contrib.postgres.indexes
import django.contrib.postgres.search
from django.db import migrations, models

# The keyword document of a garment: its title and its category's name weigh most (A), the
# colour and the catalogue's type columns next (B), gender, season, usage and year least (C).
# English stemming: "shirts" finds "Shirt". A trigger rather than a generated column, because
# it reads the category's name (another table).
SEARCH_FUNCTION = """
CREATE FUNCTION retrieval_garment_search_document() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.search_vector :=
        setweight(to_tsvector('english', coalesce(NEW.title, '')), 'A')
        || setweight(to_tsvector('english', coalesce(
            (SELECT c.name FROM retrieval_category AS c WHERE c.id = NEW.category_id), '')), 'A')
        || setweight(to_tsvector('english', concat_ws(' ',
            NEW.colour, NEW.attributes ->> 'articleType', NEW.attributes ->> 'subCategory',
            NEW.attributes ->> 'masterCategory')), 'B')
        || setweight(to_tsvector('english', concat_ws(' ',
            NEW.gender, NEW.season, NEW.usage, NEW.year::text)), 'C');
    RETURN NEW;
END
$$;
CREATE TRIGGER retrieval_garment_search_document
BEFORE INSERT OR UPDATE OF title, category_id, colour, attributes, gender, season, usage, year,
    search_vector
ON retrieval_garment FOR EACH ROW EXECUTE FUNCTION retrieval_garment_search_document();

-- A renamed category: its garments' documents name the new name.
CREATE FUNCTION retrieval_category_renamed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE retrieval_garment SET search_vector = NULL WHERE category_id = NEW.id;
    RETURN NULL;
END
$$;
CREATE TRIGGER retrieval_category_renamed
AFTER UPDATE OF name ON retrieval_category
FOR EACH ROW WHEN (OLD.name IS DISTINCT FROM NEW.name)
EXECUTE FUNCTION retrieval_category_renamed();
"""

DROP_SEARCH_FUNCTION = """
DROP TRIGGER IF EXISTS retrieval_category_renamed ON retrieval_category;
DROP FUNCTION IF EXISTS retrieval_category_renamed();
DROP TRIGGER IF EXISTS retrieval_garment_search_document ON retrieval_garment;
DROP FUNCTION IF EXISTS retrieval_garment_search_document();
"""

# Imports kept these columns in attributes (they still do: the row as imported); the fields
# take them from there. Setting search_vector fires the trigger: every document is written.
BACKFILL = r"""
UPDATE retrieval_garment SET
    gender = left(coalesce(attributes ->> 'gender', ''), 20),
    season = left(coalesce(attributes ->> 'season', ''), 20),
    usage = left(coalesce(attributes ->> 'usage', ''), 30),
    year = CASE WHEN attributes ->> 'year' ~ '^[0-9]{1,4}$'
                THEN (attributes ->> 'year')::integer END,
    colour = CASE WHEN colour = '' THEN left(coalesce(attributes ->> 'baseColour', ''), 50)
                  ELSE colour END,
    search_vector = NULL
"""


class Migration(migrations.Migration):
    dependencies = [
        ("retrieval", "0007_import_lease"),
    ]

    operations = [
        migrations.AddField(
            model_name="garment",
            name="gender",
            field=models.CharField(
                blank=True,
                db_index=True,
                help_text="Men, Women, Boys, Girls, Unisex.",
                max_length=20,
            ),
        ),
        migrations.AddField(
            model_name="garment",
            name="search_vector",
            field=django.contrib.postgres.search.SearchVectorField(editable=False, null=True),
        ),
        migrations.AddField(
            model_name="garment",
            name="season",
            field=models.CharField(
                blank=True, db_index=True, help_text="Spring, Summer, Fall, Winter.", max_length=20
            ),
        ),
        migrations.AddField(
            model_name="garment",
            name="usage",
            field=models.CharField(
                blank=True,
                db_index=True,
                help_text="Casual, Formal, Sports, Ethnic...",
                max_length=30,
            ),
        ),
        migrations.AddField(
            model_name="garment",
            name="year",
            field=models.PositiveSmallIntegerField(
                blank=True,
                db_index=True,
                help_text="Catalogue year (season's collection).",
                null=True,
            ),
        ),
        migrations.AlterField(
            model_name="garment",
            name="attributes",
            field=models.JSONField(
                blank=True,
                default=dict,
                help_text="The catalogue row's other columns, as imported.",
            ),
        ),
        migrations.AlterField(
            model_name="garment",
            name="colour",
            field=models.CharField(
                blank=True, db_index=True, help_text="Colour name, e.g. Navy Blue.", max_length=50
            ),
        ),
        migrations.RunSQL(SEARCH_FUNCTION, DROP_SEARCH_FUNCTION),
        migrations.RunSQL(BACKFILL, migrations.RunSQL.noop),
        migrations.AddIndex(
            model_name="garment",
            index=django.contrib.postgres.indexes.GinIndex(
                fields=["search_vector"], name="retrieval_garment_search_idx"
            ),
        ),
    ]
