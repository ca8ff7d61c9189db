"""python manage.py train_model [--backbone NAME] [--epochs N] [--category-field FIELD]
[--fine-tune off|top] [--fine-tune-epochs N]"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from retrieval import training


class Command(BaseCommand):
    help = (
        "Train the head (FC1 512 + FC2 categories) on the catalogue, recompute every vector "
        "from cached CNN features, fit K-means and activate the new model."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--backbone", default=None, help="resnet50, efficientnet_lite0, auto")
        parser.add_argument(
            "--epochs", type=int, default=None, help="Default: sized to the catalogue."
        )
        parser.add_argument(
            "--category-field",
            default="category",
            help="Train on the garment's category (default) or an imported attribute, "
            "e.g. subCategory.",
        )
        parser.add_argument(
            "--fine-tune",
            choices=["off", "top"],
            default=None,
            help="off = frozen backbone; top = fine-tune efficientnet_lite0's block 15 + head "
            "conv + FC1/FC2 (a new backbone version). Default: RETRIEVAL_FINE_TUNE.",
        )
        parser.add_argument(
            "--fine-tune-epochs",
            type=int,
            default=None,
            help="Epochs of the top's fine-tuning. Default: RETRIEVAL_FINE_TUNE_EPOCHS.",
        )
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--no-activate", action="store_true")

    def handle(
        self,
        *args,
        backbone,
        epochs,
        category_field,
        seed,
        no_activate,
        fine_tune=None,
        fine_tune_epochs=None,
        **options,
    ):
        if epochs is not None and epochs < 1:
            raise CommandError("--epochs must be at least 1")
        if fine_tune_epochs is not None and fine_tune_epochs < 1:
            raise CommandError("--fine-tune-epochs must be at least 1")
        last_stage = [None]
        shown = [0]  # the activations' last count shown: a line per tenth, not per batch

        def progress(state: dict) -> None:
            stage = state.get("stage")
            if stage == "activations":
                done, total = state["done"], state["total"]
                if done and done < total and done - shown[0] < max(1, total // 10):
                    return
                shown[0] = done
            # The admin's line: epoch, loss, validation accuracy, elapsed and time left.
            if stage in {"training", "fine_tuning"}:
                if state["epoch"] % 10 == 0 or state["epoch"] == state["epochs"]:
                    self.stdout.write(f"  {training.progress_text(state)}")
            elif stage in {"extracting", "vectors", "activations"}:
                self.stdout.write(f"  {training.progress_text(state)}")
            elif stage != last_stage[0]:
                self.stdout.write(f"  {stage}")
            last_stage[0] = stage

        try:
            model = training.train_model(
                backbone=backbone,
                epochs=epochs,
                category_field=category_field,
                seed=seed,
                activate=not no_activate,
                progress=progress,
                fine_tune=fine_tune,
                fine_tune_epochs=fine_tune_epochs,
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        m = model.metrics
        self.stdout.write(
            self.style.SUCCESS(
                f"model {model.name}: {len(model.classes)} classes, "
                f"validation accuracy {m.get('val_accuracy', float('nan')):.3f} "
                f"({m['n_train']} train / {m['n_val']} val / {m['n_test']} held-out test), "
                f"backbone {model.backbone}, "
                f"{'active' if model.active else 'not activated'}"
            )
        )
