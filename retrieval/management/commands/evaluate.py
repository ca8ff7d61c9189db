"""python manage.py evaluate [--queries PATH] [--limit N] [--top 5,10,20] [--json OUT]
python manage.py evaluate --sweep [--weights 0,0.3,0.6,1] [--probes 1,2,3]
    [--pipelines plain,flip,crop,crop+flip,centre,centre+flip] [--queries PATH] [--json OUT]"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from retrieval import evaluation, search


def _numbers(raw: str, kind, flag: str) -> list:
    try:
        values = [kind(v) for v in raw.split(",") if v.strip()]
    except ValueError as exc:
        raise CommandError(f"{flag} takes comma-separated numbers: {exc}") from exc
    if not values:
        raise CommandError(f"{flag} takes comma-separated numbers")
    return values


def _write_json(path: Path, data: dict) -> None:
    # Written atomically: a reader never sees half a file.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2)
    os.replace(tmp, path)


class Command(BaseCommand):
    help = (
        "Precision@k (same category; same category and colour), per-category precision and "
        "search time, fused vs deep-only, cluster vs exact search; stored as a report. "
        "--sweep prints precision over colour weight x probed clusters x mode instead."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--queries", type=Path, default=None, help="Labelled query zip.")
        parser.add_argument("--limit", type=int, default=None)
        parser.add_argument("--top", default="5,10,20")
        parser.add_argument("--category-field", default="articleType")
        parser.add_argument("--json", type=Path, default=None, dest="json_out")
        parser.add_argument(
            "--sweep",
            action="store_true",
            help="Table over colour weight x probes x mode from the cached CNN features "
            "(the active model and its vectors are not changed; no report is stored).",
        )
        parser.add_argument("--weights", default=",".join(map(str, evaluation.GRID_WEIGHTS)))
        parser.add_argument("--probes", default=",".join(map(str, evaluation.GRID_PROBES)))
        parser.add_argument(
            "--pipelines",
            default="plain",
            help=f"Query-time pipelines to compare: {', '.join(evaluation.PIPELINES)}.",
        )

    def handle(self, *args, queries, limit, top, category_field, json_out, **options) -> None:
        if options["sweep"]:
            return self.sweep(queries, limit, category_field, json_out, options)
        tops = _numbers(top, int, "--top")
        if min(tops) < 1:
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
        for query_set in m.get("query_sets", []):
            self._write_query_set(query_set)
        if json_out is not None:
            _write_json(json_out, m)
            self.stdout.write(f"wrote {json_out}")

    def _write_query_set(self, query_set: dict) -> None:
        """One labelled query set of the report: overall and per-category precision."""
        self.stdout.write(
            f"query set {query_set['name']} ({query_set['source']}): {query_set['queries']} "
            f"queries ({query_set['skipped']} skipped)"
            + (f"; not read: {query_set['error']}" if query_set["error"] else "")
        )
        for mode, values in query_set["modes"].items():
            cells = " ".join(f"{k} {'-' if v is None else round(v, 3)}" for k, v in values.items())
            self.stdout.write(f"  {mode:<7} {cells}")
            for name, row in query_set["per_category"].get(mode, {}).items():
                cells = " ".join(
                    f"{k} {'-' if v is None else round(v, 3)}"
                    for k, v in row.items()
                    if k != "queries"
                )
                self.stdout.write(f"    {name:<20} {row['queries']:>5} queries  {cells}")

    def sweep(self, queries, limit, category_field, json_out, options) -> None:
        weights = _numbers(options["weights"], float, "--weights")
        probes = _numbers(options["probes"], int, "--probes")
        if min(probes) < 1 or min(weights) < 0:
            raise CommandError("--probes must be >= 1 and --weights >= 0")
        pipelines = [p.strip() for p in options["pipelines"].split(",") if p.strip()]
        try:
            result = evaluation.run_grid(
                weights=weights,
                probes=probes,
                pipelines=pipelines,
                queries_path=queries,
                category_field=category_field,
                limit=limit,
                progress=lambda message: self.stderr.write(f"  {message}"),
            )
        except (ValueError, search.SearchUnavailable) as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            f"model {result['model']}: {result['garments']} garments, k={result['k']}, "
            f"queries {result['queries']} ({result['skipped']} skipped), "
            f"head accuracy {result['head_accuracy']}, best possible p@5 "
            f"{result['p@5_ceiling']}"
        )
        header = (
            f"{'pipeline':<10} {'colour':<24} {'probes':>6} {'mode':<12} "
            f"{'p@5':>6} {'p@10':>6} {'cc@10':>6} {'ms':>7}"
        )
        self.stdout.write(header)
        model = search.require_active_model()
        for row in result["rows"]:
            current = (
                row["pipeline"] == "plain"
                and row["mode"] == "fused"
                and row["probes"] == settings.RETRIEVAL_PROBES
                and row["variant"] == model.colour_variant
                and row["weight"] == model.colour_weight
                and row["normalize_deep"] == model.normalize_deep
            )
            cc = "-" if row["cc@10"] is None else f"{row['cc@10']:.3f}"
            self.stdout.write(
                f"{row['pipeline']:<10} {row['colour']:<24} "
                f"{'all' if row['probes'] is None else row['probes']:>6} {row['mode']:<12} "
                f"{row['p@5']:>6.3f} {row['p@10']:>6.3f} {cc:>6} {row['ms']:>7.2f}"
                + ("  <- current" if current else "")
            )
        self.stdout.write("ms: mean in-memory search time per query (numpy), not the database's")
        if json_out is not None:
            _write_json(json_out, result)
            self.stdout.write(f"wrote {json_out}")
