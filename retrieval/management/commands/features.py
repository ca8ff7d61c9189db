"""python manage.py features IMAGE [IMAGE ...] [--json]: what the method sees in a photo."""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError

from retrieval import features, indexing
from retrieval.models import FeatureModel


class Command(BaseCommand):
    help = (
        "Print the colour positions, the paper's colour feature, the deep and the fused vector "
        "of images, with the active model (or the bare backbone before one is trained)."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("images", nargs="+")
        parser.add_argument(
            "--json", action="store_true", dest="as_json", help="One JSON list, one per image."
        )

    def handle(self, *args, images: list[str], as_json: bool, **options) -> None:
        from retrieval import images as image_io

        model = FeatureModel.objects.filter(active=True).first()
        backbone = model.backbone if model is not None else indexing.current_backbone()
        extractor = features.extractor_for(backbone=backbone, model=model)
        results, failures = [], 0
        for path in images:
            try:
                out = extractor.extract([path])
            except (image_io.ImageError, OSError) as exc:
                failures += 1
                self.stderr.write(f"{path}: {exc}")
                continue
            item = {
                "image": path,
                "model": model.name if model is not None else f"{backbone} (no trained head)",
                "backbone": backbone,
                "positions": out["positions"][0].tolist(),
                # The paper's z-scored colour feature, always (pos1 R,G,B, pos2 R,G,B, ...).
                "colour": out["colour_paper"][0].tolist(),
            }
            if model is not None:
                item["colour_variant"] = model.colour_variant
                item["colour_fused"] = out["colour"][0].tolist()
                item["deep"] = out["deep"][0].tolist()
                item["fused"] = out["fused"][0].tolist()
            results.append(item)
        if as_json:
            self.stdout.write(json.dumps(results))
        else:
            for item in results:
                self.stdout.write(f"{item['image']} ({item['model']})")
                self.stdout.write(f"  positions: {item['positions']}")
                self.stdout.write(f"  colour (paper): {_short(item['colour'])}")
                if "fused" in item:
                    variant = item["colour_variant"]
                    self.stdout.write(
                        f"  colour ({variant}, fused): {_short(item['colour_fused'])}"
                    )
                    self.stdout.write(f"  deep[512]: {_short(item['deep'])}")
                    self.stdout.write(f"  fused[542]: {_short(item['fused'])}")
        if failures:
            raise CommandError(f"{failures} of {len(images)} images could not be read")


def _short(values: list[float], n: int = 6) -> str:
    head = ", ".join(f"{v:.3f}" for v in values[:n])
    return f"[{head}{', ...' if len(values) > n else ''}] ({len(values)} values)"
