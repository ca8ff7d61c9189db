from django.apps import AppConfig


class RetrievalConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "retrieval"
    verbose_name = "Retrieval"

    def ready(self) -> None:
        from retrieval import checks  # noqa: F401  (registers the settings checks)
        from retrieval.catalogue import signals  # noqa: F401  (connects the receivers)
