"""Configuration errors stop every entry point clearly, never with a traceback; importing the
settings starts nothing.

A value that cannot be read (a malformed URL or number) stops the process with one line while
the settings are imported; a value that reads but is not one of its choices is a system check
error (retrieval/checks.py), which ``manage.py check`` (every management command) reports and
which stops the web and Celery entry points with one line per error.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from urllib.parse import urlparse

import pytest
from django.core import checks

from tests.conftest import ROOT


def run_python(*args: str, env: dict[str, str] | None = None, **extra: str):
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env={**(env if env is not None else os.environ), **extra},
        capture_output=True,
        text=True,
        timeout=120,
    )


def run_manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    return run_python("manage.py", *args, **env)


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DATABASE_URL", "mysql://root@localhost/shop"),
        ("DATABASE_URL", "not a url"),
        ("REDIS_URL", "http://127.0.0.1:6379/0"),
        ("REDIS_URL", "redis://127.0.0.1:notaport/0"),
    ],
)
def test_malformed_service_url_is_one_line_naming_the_variable(variable, value):
    result = run_manage("check", **{variable: value})
    assert result.returncode != 0
    lines = error_lines(result)
    assert len(lines) == 1, result.stderr
    assert variable in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("variable", ["REDIS_CONNECT_TIMEOUT", "REDIS_SOCKET_TIMEOUT"])
def test_redis_timeouts_must_be_positive(variable):
    result = run_manage("check", **{variable: "0"})
    assert result.returncode != 0
    lines = error_lines(result)
    assert len(lines) == 1 and variable in lines[0], result.stderr


def test_production_requires_a_secret_key():
    env = {"DJANGO_DEBUG": "false", "DJANGO_SECRET_KEY": ""}
    result = run_manage("check", **env)
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY" in result.stderr
    assert "Traceback" not in result.stderr


def test_development_secret_key_is_generated_once_and_kept(settings):
    key_file = settings.VAR_DIR / "secret_key"
    assert key_file.exists()
    assert key_file.read_text().strip() == settings.SECRET_KEY
    assert len(settings.SECRET_KEY) >= 40


# --------------------------------------------------------------------------- import starts nothing

# Run in a child with an empty var dir: records every attempt to start a process, open a
# socket or write a file (Python's audit hooks see them all) while the settings are imported,
# Django reads them and sets itself up.
IMPORT_PROBE = textwrap.dedent(
    """
    import os, sys

    WATCHED = {
        "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.fork", "os.forkpty",
        "socket.connect", "socket.bind", "os.mkdir", "os.rename", "os.remove", "os.chmod",
        "os.link", "os.symlink", "shutil.copyfile",
    }
    WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    seen = []

    def hook(event, args):
        if event in WATCHED:
            seen.append(f"{event} {args!r:.200}")
        elif event == "open":
            path, mode, flags = args
            if (mode and any(c in mode for c in "wax+")) or (not mode and flags & WRITE):
                seen.append(f"{event} {args!r:.200}")

    sys.addaudithook(hook)
    import fashionsite.settings
    from django.conf import settings

    settings.DATABASES, settings.INSTALLED_APPS
    import django

    django.setup()
    print("REDIS_URL", settings.REDIS_URL)
    print("SEEN", seen)
    """
)


def test_importing_settings_starts_no_server_and_writes_nothing(tmp_path):
    var = tmp_path / "var"
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    env.update(
        DJANGO_SETTINGS_MODULE="fashionsite.settings",
        DJANGO_VAR_DIR=str(var),
        DJANGO_DEBUG="true",
        DJANGO_SECRET_KEY="",
        PYTHONDONTWRITEBYTECODE="1",  # imports write no .pyc either
    )
    result = run_python("-c", IMPORT_PROBE, env=env)
    assert result.returncode == 0, result.stderr
    assert "SEEN []" in result.stdout, result.stdout
    assert "REDIS_URL None" in result.stdout  # the embedded Redis's URL: not known, not started
    assert not var.exists()  # no var dir, no secret key, no data directories
    # No server (postmaster, redis-server) was started for that var dir.
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            assert str(var).encode() not in cmdline, cmdline


def test_ensure_services_started_the_servers_and_filled_the_settings(settings):
    from fashionsite.celery import app

    if settings.EMBEDDED_REDIS:
        url = urlparse(settings.REDIS_URL)  # the embedded Redis, on the port it recorded
        assert (url.hostname, url.port) == (
            "127.0.0.1",
            int((settings.VAR_DIR / "redis/port").read_text()),
        )
    assert settings.CELERY_BROKER_URL == settings.CELERY_RESULT_BACKEND == settings.REDIS_URL
    assert app.conf.broker_url == settings.REDIS_URL
    if settings.EMBEDDED_POSTGRES:
        assert (settings.VAR_DIR / "postgres" / "postmaster.pid").exists()
        assert settings.DATABASES["default"]["HOST"] == str(settings.VAR_DIR / "postgres")


PRINT_SERVICES = (
    "from django.conf import settings; "
    "print(settings.REDIS_URL, settings.CELERY_BROKER_URL, settings.DATABASES['default']['HOST'])"
)


@pytest.mark.parametrize(
    "entry_point",
    [
        ["manage.py", "shell", "-c", PRINT_SERVICES],
        ["-c", f"import fashionsite.wsgi; {PRINT_SERVICES}"],
        ["-c", f"import fashionsite.asgi; {PRINT_SERVICES}"],
        # A worker or beat: Celery reads its configuration (what on_configure prepares).
        [
            "-c",
            "from fashionsite.celery import app; from django.conf import settings; "
            "print(app.conf.broker_url, app.conf.result_backend, "
            "settings.DATABASES['default']['HOST'])",
        ],
    ],
    ids=["manage.py", "wsgi", "asgi", "celery"],
)
def test_each_entry_point_attaches_to_the_running_servers(settings, entry_point):
    # This session's environment: the same var dir (and URLs, where set), so the child
    # attaches to the servers this session's entry point started.
    result = run_python(*entry_point)
    assert result.returncode == 0, result.stderr
    host = settings.DATABASES["default"]["HOST"]
    printed = result.stdout.strip().splitlines()[-1].split()  # (shell first lists its imports)
    assert printed == [settings.REDIS_URL, settings.REDIS_URL, host], result.stdout


# --------------------------------------------------------------------------- retrieval checks


def retrieval_errors() -> list[checks.CheckMessage]:
    return checks.run_checks(tags=["retrieval"])


def test_default_retrieval_settings_pass_the_checks():
    assert retrieval_errors() == []


@pytest.mark.parametrize(
    ("name", "value", "check_id"),
    [
        ("RETRIEVAL_BACKBONE", "vgg16", "retrieval.E001"),
        ("RETRIEVAL_COLOUR", "hsv", "retrieval.E002"),
        ("RETRIEVAL_PRECISION", "int8", "retrieval.E003"),
        ("RETRIEVAL_RERANK", "colour", "retrieval.E004"),
        ("RETRIEVAL_SEARCH_THROTTLE", "30/fortnight", "retrieval.E005"),
        ("RETRIEVAL_SEARCH_THROTTLE", "0/min", "retrieval.E005"),
        ("RETRIEVAL_BATCH_SIZE", 0, "retrieval.E006"),
        ("RETRIEVAL_PROBES", 0, "retrieval.E006"),
        ("RETRIEVAL_TORCH_THREADS", -1, "retrieval.E006"),
        ("RETRIEVAL_KEEP_MODELS", -1, "retrieval.E006"),
        ("RETRIEVAL_MAX_UPLOAD_BYTES", 0, "retrieval.E006"),
        ("RETRIEVAL_KMEANS_SCHEDULE", "0 3 * *", "retrieval.E007"),
        ("RETRIEVAL_PRUNE_MEDIA_SCHEDULE", "30 25 * * *", "retrieval.E007"),
        ("RETRIEVAL_QUERY_CROP", "middle", "retrieval.E008"),
        ("RETRIEVAL_QUERY_CROP", True, "retrieval.E008"),  # settings.py maps the booleans
        ("RETRIEVAL_EXAMPLE_HOLDOUT", 0.95, "retrieval.E009"),
        ("RETRIEVAL_EXAMPLE_HOLDOUT", -0.1, "retrieval.E009"),
        ("RETRIEVAL_FINE_TUNE", "all", "retrieval.E012"),
        ("RETRIEVAL_FINE_TUNE_EPOCHS", 0, "retrieval.E006"),
        ("RETRIEVAL_NEAR_DUPLICATE_CANDIDATES", 0, "retrieval.E006"),
        ("RETRIEVAL_NEAR_DUPLICATE_PHASH_BITS", -1, "retrieval.E010"),
        ("RETRIEVAL_NEAR_DUPLICATE_PHASH_BITS", 257, "retrieval.E010"),
        ("RETRIEVAL_NEAR_DUPLICATE_PHOTO", 2.5, "retrieval.E010"),
        ("RETRIEVAL_NEAR_DUPLICATE_PHOTO", float("nan"), "retrieval.E010"),
        ("RETRIEVAL_NEAR_DUPLICATE_PHOTO", "0.01", "retrieval.E010"),
    ],
)
def test_a_bad_retrieval_choice_is_a_check_error_naming_it(settings, name, value, check_id):
    setattr(settings, name, value)
    errors = retrieval_errors()
    assert [(e.id, e.level) for e in errors] == [(check_id, checks.ERROR)]
    assert name in errors[0].msg and repr(value) in errors[0].msg


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RETRIEVAL_BACKBONE", "auto"),
        ("RETRIEVAL_BACKBONE", "efficientnet_lite0"),
        ("RETRIEVAL_COLOUR", "paper"),
        ("RETRIEVAL_PRECISION", "bf16"),
        ("RETRIEVAL_RERANK", "none"),
        ("RETRIEVAL_SEARCH_THROTTLE", "500/hour"),
        ("RETRIEVAL_SEARCH_THROTTLE", None),  # off
        ("RETRIEVAL_KMEANS_K", 0),
        ("RETRIEVAL_KMEANS_SCHEDULE", "*/15 2-4 * * mon-fri"),
        ("RETRIEVAL_QUERY_CROP", "centre"),
        ("RETRIEVAL_QUERY_CROP", "map"),
        ("RETRIEVAL_QUERY_CROP", "off"),
        ("RETRIEVAL_FINE_TUNE", "off"),
        ("RETRIEVAL_FINE_TUNE", "top"),
        ("RETRIEVAL_NEAR_DUPLICATE_PHASH_BITS", 0),
        ("RETRIEVAL_NEAR_DUPLICATE_PHOTO", 2),
    ],
)
def test_good_retrieval_choices_pass(settings, name, value):
    setattr(settings, name, value)
    assert retrieval_errors() == []


@pytest.mark.parametrize(
    ("backbone", "check_ids"),
    [("resnet50", ["retrieval.E013"]), ("efficientnet_lite0", []), ("auto", [])],
)
def test_fine_tuning_the_top_needs_a_backbone_whose_top_can_be_tuned(settings, backbone, check_ids):
    settings.RETRIEVAL_FINE_TUNE = "top"
    settings.RETRIEVAL_BACKBONE = backbone
    errors = retrieval_errors()
    assert [e.id for e in errors] == check_ids
    assert all("RETRIEVAL_FINE_TUNE=top" in e.msg and backbone in e.msg for e in errors)


def test_manage_check_reports_each_bad_choice_with_its_id():
    result = run_manage("check", RETRIEVAL_BACKBONE="vgg16", RETRIEVAL_BATCH_SIZE="0")
    assert result.returncode != 0
    assert "(retrieval.E001) RETRIEVAL_BACKBONE='vgg16'" in result.stderr, result.stderr
    assert "auto, resnet50 or efficientnet_lite0" in result.stderr
    assert "(retrieval.E006) RETRIEVAL_BATCH_SIZE=0" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_choice_stops_the_web_entry_point_with_one_line():
    result = run_python("-c", "import fashionsite.wsgi", RETRIEVAL_COLOUR="hsv")
    assert result.returncode == 2
    lines = error_lines(result)
    assert len(lines) == 1 and "retrieval.E002" in lines[0] and "RETRIEVAL_COLOUR" in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("variable", "value"),
    [("RETRIEVAL_BATCH_SIZE", "thirty-two"), ("RETRIEVAL_QUERY_FLIP", "maybe")],
)
def test_an_unreadable_number_or_boolean_still_stops_at_import(variable, value):
    result = run_manage("check", **{variable: value})
    assert result.returncode != 0
    lines = error_lines(result)
    assert len(lines) == 1 and variable in lines[0], result.stderr


def test_query_crop_reads_its_modes_and_the_booleans_it_used_to_be():
    """RETRIEVAL_QUERY_CROP was a boolean (the activation-map crop): old environments keep
    their meaning; unset is the centre crop; a value that is neither is a check error."""
    script = "import fashionsite.settings as s; print(s.RETRIEVAL_QUERY_CROP)"
    expected = {
        "": "centre",
        "centre": "centre",
        "Center": "centre",
        "MAP": "map",
        "off": "off",
        "true": "map",
        "1": "map",
        "yes": "map",
        "false": "off",
        "0": "off",
        "no": "off",
    }
    for value, mode in expected.items():
        result = run_python("-c", script, RETRIEVAL_QUERY_CROP=value)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == mode, (value, result.stdout)
    result = run_manage("check", RETRIEVAL_QUERY_CROP="maybe")
    assert result.returncode != 0
    assert "(retrieval.E008) RETRIEVAL_QUERY_CROP='maybe'" in result.stderr, result.stderr
    assert "centre, map or off" in result.stderr
    assert "Traceback" not in result.stderr
