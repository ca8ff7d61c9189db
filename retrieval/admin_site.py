"""The staff admin site: branded for the shop, catalogue work apart from the search engine's
technical sections (models, K-means runs, evaluations, vectors)."""

from __future__ import annotations

from django.contrib import admin
from django.contrib.admin.apps import AdminConfig

# Object names of the retrieval models listed under "Search engine (technical)"; every other
# retrieval model (categories, garments, imports, ...) is catalogue work.
TECHNICAL = frozenset(
    {"FeatureModel", "ClusterRun", "EvaluationReport", "GarmentFeature", "BackboneFeature"}
)


class ShopAdminSite(admin.AdminSite):
    site_header = "fashionsite · shop admin"
    site_title = "fashionsite admin"
    index_title = "Catalogue and search"

    def get_app_list(self, request, app_label=None):
        apps = super().get_app_list(request, app_label)
        out = []
        for app in apps:
            if app["app_label"] != "retrieval":
                out.append(app)
                continue
            catalogue = [m for m in app["models"] if m["object_name"] not in TECHNICAL]
            technical = [m for m in app["models"] if m["object_name"] in TECHNICAL]
            if catalogue:
                out.append({**app, "name": "Catalogue", "models": catalogue})
            if technical:
                out.append({**app, "name": "Search engine (technical)", "models": technical})
        # Catalogue work first, the technical sections and accounts after.
        order = {"Catalogue": 0, "Search engine (technical)": 1}
        return sorted(out, key=lambda a: order.get(a["name"], 2))


class ShopAdminConfig(AdminConfig):
    default_site = "retrieval.admin_site.ShopAdminSite"
