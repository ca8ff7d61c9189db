"""manage.py backup / restore on the real PostgreSQL: a round trip into a fresh install, and
every way a backup can be refused (damaged, partial, another version, full disk)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.files.base import ContentFile
from django.core.management import call_command
from django.core.management.base import CommandError

from retrieval import backup
from retrieval.models import Garment
from tests.conftest import ROOT, service_env
from tests.factories import GarmentFactory

SEARCH_SCRIPT = """
import json, os
from pathlib import Path
from retrieval import search
out = []
for name in os.environ["PHOTOS"].split(os.pathsep):
    result = search.search_image(image=Path(name).read_bytes(), top=10)
    out.append([hit.garment_id for hit in result.hits])
print("RESULT " + json.dumps(out))
"""


def fresh_install_env(var_dir: Path) -> dict[str, str]:
    """A child process on a brand-new install: its own embedded PostgreSQL, media and models
    under ``var_dir`` (the test Redis, which restore does not use)."""
    env = service_env(DJANGO_VAR_DIR=str(var_dir))
    for key in ("DATABASE_URL", "MEDIA_ROOT", "RETRIEVAL_MODELS_DIR"):
        env.pop(key, None)
    return env


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_backup_then_restore_into_a_fresh_install_gives_the_same_top_10(
    trained_catalogue, tmp_path
):
    from retrieval import search

    photos: list[Path] = []
    for name in sorted(trained_catalogue.images)[:3]:
        path = tmp_path / f"photo-{len(photos)}.jpg"
        path.write_bytes(trained_catalogue.images[name])
        photos.append(path)
    before = [
        [hit.garment_id for hit in search.search_image(image=p.read_bytes(), top=10).hits]
        for p in photos
    ]
    assert all(len(ids) == 10 for ids in before)

    call_command("backup", str(tmp_path / "backup"))
    manifest = json.loads((tmp_path / "backup" / "manifest.json").read_text())
    assert manifest["counts"]["retrieval_garment"] == len(trained_catalogue.ids[Garment])
    assert manifest["active"]["model"] and manifest["active"]["cluster_runs"]
    assert {f["area"] for f in manifest["files"]} == {"media", "models"}

    fresh = tmp_path / "fresh-var"
    env = fresh_install_env(fresh)
    try:
        restored = manage(env, "restore", str(tmp_path / "backup"))
        assert restored.returncode == 0, restored.stdout + restored.stderr
        searched = manage({**env, "PHOTOS": os.pathsep.join(map(str, photos))}, "shell", "-c",
                          SEARCH_SCRIPT)  # fmt: skip
        assert searched.returncode == 0, searched.stderr[-3000:]
        line = next(x for x in searched.stdout.splitlines() if x.startswith("RESULT "))
        assert json.loads(line.removeprefix("RESULT ")) == before
        # The restored images and head are files of the fresh install.
        assert (fresh / "media" / manifest["files"][0]["path"]).is_file()
        assert list((fresh / "models" / "heads").glob("*.pt"))
        assert not list((fresh / "media").glob(".restore-*"))
        # Now it is not empty: a second restore is refused without --force.
        again = manage(env, "restore", str(tmp_path / "backup"))
        assert again.returncode != 0 and "not empty" in again.stderr
    finally:
        subprocess.run(
            [sys.executable, "-m", "fashionsite.embedded", "stop", str(fresh)],
            cwd=ROOT, env=env, capture_output=True, check=False,
        )  # fmt: skip


# --------------------------------------------------------------------------- refusals


@pytest.fixture
def small_backup(transactional_db, media_root, tmp_path) -> Path:
    """A backup of three garments (no model), made by the command."""
    for _ in range(3):
        GarmentFactory()
    target = tmp_path / "small-backup"
    call_command("backup", str(target))
    return target


def edit_manifest(directory: Path, change) -> None:
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def refused(directory: Path, *args: str) -> str:
    with pytest.raises(CommandError) as exc:
        call_command("restore", str(directory), *args)
    return str(exc.value)


def test_a_backup_without_its_manifest_is_not_a_backup(small_backup):
    (small_backup / "manifest.json").unlink()
    assert "not a complete backup" in refused(small_backup, "--force")


def test_a_damaged_manifest_is_refused(small_backup):
    (small_backup / "manifest.json").write_text('{"format": 1, "applic')
    assert "damaged" in refused(small_backup, "--force")


def test_a_truncated_dump_and_a_changed_image_are_refused_by_name(small_backup):
    dump = small_backup / "database.dump"
    dump.write_bytes(dump.read_bytes()[:-100])
    image = next((small_backup / "media").rglob("*.jpg"))
    image.write_bytes(b"x" + image.read_bytes()[1:])
    message = refused(small_backup, "--force")
    assert "database.dump" in message and "truncated" in message
    assert image.name in message and "checksum" in message


def test_a_missing_file_is_refused(small_backup):
    next((small_backup / "media").rglob("*.jpg")).unlink()
    assert "missing: media/" in refused(small_backup, "--force")


def test_a_manifest_from_another_version_is_refused(small_backup):
    edit_manifest(small_backup, lambda m: m.update(format=backup.MANIFEST_FORMAT + 1))
    assert "another version" in refused(small_backup, "--force")


def test_a_backup_from_a_newer_schema_is_refused(small_backup):
    edit_manifest(small_backup, lambda m: m["migrations"].append("retrieval.9999_future"))
    message = refused(small_backup, "--force")
    assert "newer version" in message and "retrieval.9999_future" in message


def test_a_path_outside_the_install_is_refused(small_backup, media_root):
    def escape(manifest):
        manifest["files"][0]["path"] = "../../outside.jpg"

    edit_manifest(small_backup, escape)
    assert "unsafe path" in refused(small_backup, "--force")
    assert not (media_root.parent.parent / "outside.jpg").exists()


def test_restore_refuses_a_non_empty_install_without_force(small_backup):
    assert "not empty (3 garments" in refused(small_backup)


def test_a_failed_database_restore_changes_nothing(small_backup, media_root, monkeypatch):
    """A table held by another session: pg_restore gives up, its transaction rolls back, the
    staged files are removed and the install is as it was."""
    import psycopg

    from tests.conftest import database_url_for

    GarmentFactory(sku="MADE-AFTER-THE-BACKUP")
    files_before = sorted(p.relative_to(media_root) for p in media_root.rglob("*"))
    monkeypatch.setattr("retrieval.backup.archive.RESTORE_LOCK_TIMEOUT_MS", 500)
    from django.db import connection

    with psycopg.connect(database_url_for(connection.settings_dict)) as other:
        other.execute("BEGIN")
        other.execute("LOCK TABLE retrieval_garment IN ACCESS SHARE MODE")
        message = refused(small_backup, "--force")
    assert "rolled back, nothing was changed" in message and "stop the site" in message
    assert Garment.objects.filter(sku="MADE-AFTER-THE-BACKUP").exists()
    assert Garment.objects.count() == 4
    assert sorted(p.relative_to(media_root) for p in media_root.rglob("*")) == files_before


def test_restore_with_force_replaces_the_install(small_backup, media_root):
    GarmentFactory(sku="MADE-AFTER-THE-BACKUP")
    call_command("restore", str(small_backup), "--force")
    assert Garment.objects.count() == 3
    assert not Garment.objects.filter(sku="MADE-AFTER-THE-BACKUP").exists()
    for garment in Garment.objects.all():
        assert (media_root / garment.image.name).is_file()


def test_backup_refuses_a_directory_that_is_not_empty(transactional_db, tmp_path):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "keep.txt").write_text("mine")
    with pytest.raises(CommandError, match="not an empty directory"):
        call_command("backup", str(tmp_path / "used"))
    assert [p.name for p in (tmp_path / "used").iterdir()] == ["keep.txt"]


@pytest.fixture
def small_disk() -> Iterator[Path]:
    """A 256 KiB tmpfs: a disk that fills up (needs root and mount; skipped otherwise)."""
    where = Path(f"/tmp/fashionsite-small-disk-{uuid.uuid4().hex[:8]}")
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(where)],
        capture_output=True, check=False,
    )  # fmt: skip
    if mounted.returncode != 0:
        where.rmdir()
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    yield where
    subprocess.run(["umount", str(where)], check=False)
    shutil.rmtree(where, ignore_errors=True)


@pytest.mark.parametrize("big_file", [False, True], ids=["dump-fills-it", "files-do-not-fit"])
def test_a_full_disk_fails_the_backup_cleanly(transactional_db, media_root, small_disk, big_file):
    GarmentFactory()
    if big_file:  # the dump fits; the images do not
        GarmentFactory(image=ContentFile(os.urandom(400_000), name="big.jpg"))
    else:  # the dump itself does not fit: a table of 300 kB of incompressible text
        GarmentFactory(description=os.urandom(200_000).hex())
    with pytest.raises(CommandError) as exc:
        call_command("backup", str(small_disk / "nightly"))
    assert "nothing was written" in str(exc.value)
    assert "space" in str(exc.value)
    assert list(small_disk.iterdir()) == []  # no partial directory left behind


def test_the_partitions_keys_are_restored_just_before_the_parents():
    """Created in list order (the parent's key, made ONLY, is attached to its partitions'),
    cleaned in reverse (the parent's key first, taking its partitions' keys along)."""
    listing = [
        "10; 1259 1 TABLE public retrieval_searchrow postgres",
        "11; 1259 2 TABLE public retrieval_searchrow_r1 postgres",
        "20; 2606 3 CONSTRAINT public retrieval_garment retrieval_garment_pkey postgres",
        "21; 2606 4 CONSTRAINT public retrieval_searchrow retrieval_searchrow_pkey postgres",
        "22; 2606 5 CONSTRAINT public retrieval_searchrow_r1 retrieval_searchrow_r1_pkey postgres",
        "23; 2606 6 CONSTRAINT public retrieval_searchrow_r12 retrieval_searchrow_r12_pkey pg",
        "30; 0 0 INDEX ATTACH public retrieval_searchrow_r1_pkey postgres",
    ]
    ordered = backup.archive.partition_keys_first(listing)
    assert sorted(ordered) == sorted(listing)  # nothing left out
    assert [line.split(";")[0] for line in ordered] == ["10", "11", "20", "22", "23", "21", "30"]
    without_parent = [line for line in listing if not line.startswith("21;")]
    assert backup.archive.partition_keys_first(without_parent) == without_parent


def test_a_fine_tuned_backbones_weights_are_backed_up(transactional_db, tmp_path, settings):
    """A model of a fine-tuned backbone (RETRIEVAL_FINE_TUNE=top) needs its weights file
    beside its head: both are copied, with their checksums."""
    from retrieval.spec import tuned_weights_file
    from tests.factories import FeatureModelFactory

    settings.RETRIEVAL_MODELS_DIR = tmp_path / "models"
    key = "efficientnet_lite0+ftabcdef12"
    model: Any = FeatureModelFactory(backbone=key, head_file="heads/tuned.pt")
    for name in (model.head_file, tuned_weights_file(key)):
        path = settings.RETRIEVAL_MODELS_DIR / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(name.encode())
    call_command("backup", str(tmp_path / "backup"))
    manifest = json.loads((tmp_path / "backup" / "manifest.json").read_text())
    copied = {f["path"] for f in manifest["files"] if f["area"] == "models"}
    assert copied == {"heads/tuned.pt", f"backbones/{key}.pt"} and manifest["missing"] == []
    assert (tmp_path / "backup" / "models" / "backbones" / f"{key}.pt").read_bytes() == (
        tuned_weights_file(key).encode()
    )
