"""python manage.py build_clusters [--k K]: a new K-means run for the active model, switched in."""

from django.core.management.base import BaseCommand, CommandError

from retrieval.search import clustering


class Command(BaseCommand):
    help = "Fit K-means over the active model's fused vectors and switch searches to it."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--k", type=int, default=None, help="Default: active categories.")

    def handle(self, *args, k, **options) -> None:
        try:
            run = clustering.build_clusters(k=k)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            self.style.SUCCESS(
                f"cluster run {run.pk}: k={run.k} over {run.n_samples} vectors, "
                f"inertia {run.inertia:.1f}, {run.seconds:.1f}s ({run.algorithm})"
            )
        )
