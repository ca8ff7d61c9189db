"""System checks of the retrieval method's settings: ``manage.py check`` names each bad one.

Two kinds of bad configuration, two places:

- a value that cannot be read at all (``RETRIEVAL_BATCH_SIZE=abc``, ``RETRIEVAL_QUERY_FLIP=
  maybe``, a malformed ``DATABASE_URL``) has no value to check: settings.py stops the process
  with one line while it is imported, as before;
- a value that reads but is not one of the choices or out of range (``RETRIEVAL_BACKBONE=vgg``,
  ``RETRIEVAL_BATCH_SIZE=0``) is an Error here, with an id per kind:

  ========================  ===========================================================
  ``retrieval.E001``        ``RETRIEVAL_BACKBONE`` is not auto or a backbone
  ``retrieval.E002``        ``RETRIEVAL_COLOUR`` is not a colour variant
  ``retrieval.E003``        ``RETRIEVAL_PRECISION`` is not auto or a precision
  ``retrieval.E004``        ``RETRIEVAL_RERANK`` is not a re-rank mode
  ``retrieval.E005``        ``RETRIEVAL_SEARCH_THROTTLE`` or ``RETRIEVAL_SEARCH_USER_THROTTLE``
                            is not N/unit (or off)
  ``retrieval.E006``        an integer setting is below its minimum (:data:`MINIMUMS`)
  ``retrieval.E007``        a cron schedule is not five valid fields
  ``retrieval.E008``        ``RETRIEVAL_QUERY_CROP`` is not a query crop mode (the old
                            booleans are read as map / off by settings.py)
  ``retrieval.E009``        ``RETRIEVAL_EXAMPLE_HOLDOUT`` is not between 0 and 0.9
  ``retrieval.E010``        ``RETRIEVAL_NEAR_DUPLICATE_PHASH_BITS`` is not from 0 to 256 or
                            ``RETRIEVAL_NEAR_DUPLICATE_PHOTO`` not a number from 0 to 2
  ``retrieval.E011``        ``RETRIEVAL_SEARCH_LOW_CONFIDENCE`` is not from 0 to 1
  ``retrieval.E012``        ``RETRIEVAL_FINE_TUNE`` is not off or top
  ``retrieval.E013``        ``RETRIEVAL_FINE_TUNE=top`` with a backbone whose top cannot be
                            fine-tuned (resnet50)
  ``retrieval.W001``        a file named by ``RETRIEVAL_EVALUATION_QUERY_SETS`` or
                            ``RETRIEVAL_EXAMPLE_PHOTOS`` does not exist (skipped, not fatal)
  ========================  ===========================================================

Django runs them before management commands (``check``, ``migrate``, ``runserver``, ...);
the entry points that run no command (``fashionsite.wsgi``, ``fashionsite.asgi``, the Celery
worker and beat) call :func:`exit_on_errors` once the apps are loaded, so a bad choice stops
them too. Registered by :meth:`retrieval.apps.RetrievalConfig.ready`; the choices come from
:mod:`retrieval.spec` (no torch here).
"""

from __future__ import annotations

import math
import re
import sys

from django.conf import settings
from django.core import checks

from retrieval import spec

#: The check tag (``manage.py check --tag retrieval`` runs these only).
TAG = "retrieval"

#: Integer settings and their least allowed value.
MINIMUMS: dict[str, int] = {
    "RETRIEVAL_TORCH_THREADS": 0,  # 0 = torch's default
    "RETRIEVAL_BATCH_SIZE": 1,
    "RETRIEVAL_FINE_TUNE_EPOCHS": 1,
    "RETRIEVAL_LOADER_WORKERS": 0,
    "RETRIEVAL_KMEANS_K": 0,  # 0 = the number of active categories
    "RETRIEVAL_PROBES": 1,
    "RETRIEVAL_SWEEP_MINUTES": 1,
    "RETRIEVAL_PRUNE_MEDIA_MINUTES": 1,
    "RETRIEVAL_STUCK_MINUTES": 1,
    "RETRIEVAL_KEEP_MODELS": 0,
    "RETRIEVAL_MAX_UPLOAD_BYTES": 1,
    "RETRIEVAL_MAX_PIXELS": 1,
    "RETRIEVAL_MAX_IMPORT_BYTES": 1,
    "RETRIEVAL_NEAR_DUPLICATE_CANDIDATES": 1,
    "RETRIEVAL_SEARCH_LOG_DAYS": 1,
    # The login lockout (retrieval.http.lockout): 0 would lock every login, or none for long.
    "DJANGO_LOGIN_FAILURE_LIMIT": 1,
    "DJANGO_LOGIN_COOLOFF_MINUTES": 1,
}

#: Cron expressions (minute hour day-of-month month day-of-week) beat runs tasks on.
SCHEDULES: tuple[str, ...] = (
    "RETRIEVAL_KMEANS_SCHEDULE",
    "RETRIEVAL_PRUNE_MEDIA_SCHEDULE",
    "RETRIEVAL_SEARCH_LOG_SCHEDULE",
)

_CHOICES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("RETRIEVAL_BACKBONE", spec.BACKBONE_CHOICES, "retrieval.E001"),
    ("RETRIEVAL_COLOUR", spec.COLOUR_VARIANTS, "retrieval.E002"),
    ("RETRIEVAL_PRECISION", spec.PRECISION_CHOICES, "retrieval.E003"),
    ("RETRIEVAL_RERANK", spec.RERANK_MODES, "retrieval.E004"),
    ("RETRIEVAL_QUERY_CROP", spec.QUERY_CROP_MODES, "retrieval.E008"),
    ("RETRIEVAL_FINE_TUNE", spec.FINE_TUNE_MODES, "retrieval.E012"),
)

# N/unit, a positive N and a unit Django REST framework reads (it looks at the first letter).
_THROTTLE = re.compile(r"[1-9][0-9]*/(s|sec|second|m|min|minute|h|hour|d|day)")


def _one_of(choices: tuple[str, ...]) -> str:
    return ", ".join(choices[:-1]) + " or " + choices[-1]


@checks.register(TAG)
def check_choices(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    """retrieval.E001-E004, E008, E012: each choice setting names one of its choices."""
    errors = []
    for name, choices, check_id in _CHOICES:
        value = getattr(settings, name)
        if value not in choices:
            errors.append(
                checks.Error(
                    f"{name}={value!r} is not one of its choices.",
                    hint=f"Use {_one_of(choices)}.",
                    id=check_id,
                )
            )
    return errors


@checks.register(TAG)
def check_search_throttle(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    """retrieval.E005: RETRIEVAL_SEARCH_THROTTLE and RETRIEVAL_SEARCH_USER_THROTTLE are N/unit
    (settings turned off into None)."""
    errors: list[checks.CheckMessage] = []
    for name in ("RETRIEVAL_SEARCH_THROTTLE", "RETRIEVAL_SEARCH_USER_THROTTLE"):
        rate = getattr(settings, name)
        if rate is None or (isinstance(rate, str) and _THROTTLE.fullmatch(rate)):
            continue
        errors.append(
            checks.Error(
                f"{name}={rate!r} is not a rate.",
                hint="Use N/second, N/minute, N/hour or N/day (e.g. 30/min), or off.",
                id="retrieval.E005",
            )
        )
    return errors


@checks.register(TAG)
def check_minimums(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    """retrieval.E006: integer settings at least their minimum (:data:`MINIMUMS`)."""
    errors = []
    for name, minimum in MINIMUMS.items():
        value = getattr(settings, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            errors.append(
                checks.Error(
                    f"{name}={value!r} must be an integer of at least {minimum}.",
                    id="retrieval.E006",
                )
            )
    return errors


@checks.register(TAG)
def check_schedules(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    """retrieval.E007: beat's cron schedules are five fields Celery's crontab accepts."""
    from celery.schedules import ParseException, crontab

    errors = []
    for name in SCHEDULES:
        expr = getattr(settings, name)
        fields = expr.split() if isinstance(expr, str) else []
        problem = None
        if len(fields) != 5:
            problem = "is not five fields"
        else:
            minute, hour, day_of_month, month_of_year, day_of_week = fields
            try:
                # crontab() parses each field (ValueError or ParseException when it can't).
                crontab(minute, hour, day_of_week, day_of_month, month_of_year)
            except (ValueError, ParseException) as exc:
                problem = f"does not parse ({str(exc).rstrip('.')})"
        if problem:
            errors.append(
                checks.Error(
                    f"{name}={expr!r} {problem}.",
                    hint="Use a cron expression: minute hour day-of-month month day-of-week, "
                    "e.g. '0 3 * * *'.",
                    id="retrieval.E007",
                )
            )
    return errors


@checks.register(TAG)
def check_examples(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    """retrieval.E009: the example photos' hold-out share is 0..0.9; retrieval.W001: the
    labelled query sets and example photos named exist (a missing one is skipped, so a
    warning: an evaluation or first start without it still runs)."""
    from pathlib import Path

    messages: list[checks.CheckMessage] = []
    holdout: object = settings.RETRIEVAL_EXAMPLE_HOLDOUT  # an override may set anything
    if not (isinstance(holdout, int | float) and 0 <= holdout <= 0.9):
        messages.append(
            checks.Error(
                f"RETRIEVAL_EXAMPLE_HOLDOUT={holdout!r} must be a number from 0 to 0.9.",
                hint="The share of senders held out for evaluation; 0 trains on all of them.",
                id="retrieval.E009",
            )
        )
    named = [
        ("RETRIEVAL_EVALUATION_QUERY_SETS", path)
        for path in settings.RETRIEVAL_EVALUATION_QUERY_SETS
    ]
    if settings.RETRIEVAL_EXAMPLE_PHOTOS:
        named.append(("RETRIEVAL_EXAMPLE_PHOTOS", settings.RETRIEVAL_EXAMPLE_PHOTOS))
    for name, path in named:
        if not Path(path).exists():
            messages.append(
                checks.Warning(
                    f"{name} names {path}, which does not exist: it is skipped.",
                    id="retrieval.W001",
                )
            )
    return messages


@checks.register(TAG)
def check_low_confidence(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    """retrieval.E011: RETRIEVAL_SEARCH_LOW_CONFIDENCE is a probability (0..1)."""
    value: object = settings.RETRIEVAL_SEARCH_LOW_CONFIDENCE
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        return [
            checks.Error(
                f"RETRIEVAL_SEARCH_LOW_CONFIDENCE={value!r} must be a number from 0 to 1.",
                hint="Below it a search counts as low-confidence on the search dashboard.",
                id="retrieval.E011",
            )
        ]
    return []


def exit_on_errors() -> None:
    """Run these checks; on any error write one line per error to stderr and exit (status 2).

    For the entry points that run no management command (Django runs the checks for those).
    The apps must be loaded.
    """
    errors = [
        message
        for message in checks.run_checks(tags=[TAG])
        if message.level >= checks.ERROR and not message.is_silenced()
    ]
    if not errors:
        return
    for error in errors:
        hint = f" {error.hint}" if error.hint else ""
        sys.stderr.write(f"fashionsite: ({error.id}) {error.msg}{hint}\n")
    raise SystemExit(2)


@checks.register(TAG)
def check_fine_tune(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    """retrieval.E013: RETRIEVAL_FINE_TUNE=top names a backbone whose top can be fine-tuned
    (``auto`` is checked when training resolves it: it may find resnet50's weights)."""
    backbone = settings.RETRIEVAL_BACKBONE
    if settings.RETRIEVAL_FINE_TUNE != "top" or backbone == "auto":
        return []
    if backbone in spec.FINE_TUNABLE:
        return []
    return [
        checks.Error(
            f"RETRIEVAL_FINE_TUNE=top cannot fine-tune RETRIEVAL_BACKBONE={backbone!r}.",
            hint=f"Use RETRIEVAL_BACKBONE={_one_of(('auto', *spec.FINE_TUNABLE))}, or "
            "RETRIEVAL_FINE_TUNE=off.",
            id="retrieval.E013",
        )
    ]


@checks.register(TAG)
def check_near_duplicates(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    """retrieval.E010: the near-duplicate rule's thresholds (retrieval.search.duplicates) are
    distances: bits of a 256-bit hash (0..256), the thumbnails' 1 - a correlation (0..2)."""
    errors: list[checks.CheckMessage] = []
    bounds = (
        ("RETRIEVAL_NEAR_DUPLICATE_PHASH_BITS", 0.0, 256.0),
        ("RETRIEVAL_NEAR_DUPLICATE_PHOTO", 0.0, 2.0),
    )
    for name, low, high in bounds:
        value: object = getattr(settings, name)  # an override may set anything
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if (
            not number
            or not math.isfinite(value)  # type: ignore[arg-type]
            or not low <= value <= high  # type: ignore[operator]
        ):
            span = f"from {low:g} to {high:g}"
            errors.append(
                checks.Error(
                    f"{name}={value!r} must be a number {span}.",
                    hint="A distance below which indexing flags two photos as possible "
                    "duplicates (docs/settings.md); 0 flags only identical ones.",
                    id="retrieval.E010",
                )
            )
    return errors
