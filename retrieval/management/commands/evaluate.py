"""python manage.py evaluate [--queries PATH] [--limit N] [--top 5,10,20] [--json OUT]"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from retrieval import evaluation, search


class Command(BaseCommand):
    help = (
        "Precision@k (same category; same category and colour), per-category precision and "
        "search time, fused vs deep-only, cluster vs exact search; stored as a report."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--queries", type=Path, default=None, help="Labelled query zip.")
        parser.add_argument("--limit", type=int, default=None)
        parser.add_argument("--top", default="5,10,20")
        parser.add_argument("--category-field", default="articleType")
        parser.add_argument("--json", type=Path, default=None, dest="json_out")

    def handle(self, *args, queries, limit, top, category_field, json_out, **options) -> None:
        try:
            tops = [int(k) for k in top.split(",") if k.strip()]
        except ValueError as exc:
            raise CommandError(f"--top takes numbers like 5,10,20: {exc}") from exc
        if not tops or min(tops) < 1:
            raise CommandError("--top takes positive numbers like 5,10,20")
        try:
            report = evaluation.run_evaluation(
                limit=limit, tops=tops, queries_path=queries, category_field=category_field
            )
        except (ValueError, search.SearchUnavailable) as exc:
            raise CommandError(str(exc)) from exc
        m = report.metrics
        self.stdout.write(f"report {report.pk}: {m['queries']} queries ({m['skipped']} skipped)")
        keys = list(m["modes"]["fused"])
        self.stdout.write("  mode    " + " ".join(f"{k:>7}" for k in keys))
        rows = [(mode, values, "") for mode, values in m["modes"].items()]
        rows += [(f"{mode}*", values, "   (* exact search)") for mode, values in m["exact"].items()]
        for label, values, note in rows:
            cells = " ".join(
                f"{'-' if values.get(k) is None else round(values[k], 3):>7}" for k in keys
            )
            self.stdout.write(f"  {label:<7} {cells}{note}")
        if json_out is not None:
            # Written atomically: a reader never sees half a file.
            json_out.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=json_out.parent, suffix=".tmp")
            with os.fdopen(fd, "w") as handle:
                json.dump(m, handle, indent=2)
            os.replace(tmp, json_out)
            self.stdout.write(f"wrote {json_out}")
