"""Backup and restore of a whole install: the database, media files and trained model files."""

from retrieval.backup.archive import (
    MANIFEST_FORMAT,
    BackupError,
    BackupResult,
    RestoreResult,
    make_backup,
    read_manifest,
    restore_backup,
    verify_backup,
)

__all__ = [
    "MANIFEST_FORMAT",
    "BackupError",
    "BackupResult",
    "RestoreResult",
    "make_backup",
    "read_manifest",
    "restore_backup",
    "verify_backup",
]
