"""Staff curation: categories, garments, duplicate photos, example photos, feature models,
cluster runs, evaluation reports, imports, API tokens and the search analytics.

One module per admin section; importing this package (Django's admin autodiscovery imports
``retrieval.admin``) imports every section, which registers its ModelAdmins. The names the
single ``retrieval/admin.py`` used to define are re-exported here.
"""

from __future__ import annotations

from retrieval.admin.analytics import DashboardPeriodForm, SearchLogAdmin, dashboard_context
from retrieval.admin.catalogue import (
    ATTRIBUTE_PREFIX,
    CategoryActionForm,
    CategoryAdmin,
    GarmentAdmin,
    GarmentForm,
)
from retrieval.admin.common import TONES, UploadAdminMixin, badge, require
from retrieval.admin.duplicates import (
    GarmentDuplicatesMixin,
    NearDuplicateAdmin,
    PossibleDuplicateFilter,
)
from retrieval.admin.evaluation import EvaluationReportAdmin, evaluation_context, evaluation_csv
from retrieval.admin.examples import ExampleImportForm, ExamplePhotoAdmin, ExamplePhotoForm
from retrieval.admin.feature_models import (
    FEATURE_MODEL_FIXED,
    BackboneFeatureAdmin,
    ClusterRunAdmin,
    FeatureModelAdmin,
    GarmentFeatureAdmin,
    comparison_context,
    promotion_of,
)
from retrieval.admin.imports import ImportJobAdmin, ImportJobForm
from retrieval.admin.tokens import ApiTokenAdmin, TokenUserAdmin

__all__ = [
    "ATTRIBUTE_PREFIX",
    "FEATURE_MODEL_FIXED",
    "TONES",
    "ApiTokenAdmin",
    "BackboneFeatureAdmin",
    "CategoryActionForm",
    "CategoryAdmin",
    "ClusterRunAdmin",
    "DashboardPeriodForm",
    "EvaluationReportAdmin",
    "ExampleImportForm",
    "ExamplePhotoAdmin",
    "ExamplePhotoForm",
    "FeatureModelAdmin",
    "GarmentAdmin",
    "GarmentDuplicatesMixin",
    "GarmentFeatureAdmin",
    "GarmentForm",
    "ImportJobAdmin",
    "ImportJobForm",
    "NearDuplicateAdmin",
    "PossibleDuplicateFilter",
    "SearchLogAdmin",
    "TokenUserAdmin",
    "UploadAdminMixin",
    "badge",
    "comparison_context",
    "dashboard_context",
    "evaluation_context",
    "evaluation_csv",
    "promotion_of",
    "require",
]
