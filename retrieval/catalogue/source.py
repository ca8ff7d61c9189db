"""Reading a catalogue to import: a zip or a folder holding ``styles.csv`` and ``images/``.

The format is the shared sample's (Fashion Product Images):
``id,image,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,
productDisplayName`` with ``images/<id>.jpg``. Nothing here touches the database: it yields
clean rows and problems (which row or file, and why), and refuses what is unsafe (path
traversal, absolute paths, zip bombs) without stopping the rest.
"""

from __future__ import annotations

import csv
import io
import posixpath
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

CSV_NAMES = ("styles.csv",)
# A member whose uncompressed size is this many times its compressed size is a zip bomb:
# JPEGs barely compress (ratio ~1), a CSV of text ~5-10.
MAX_COMPRESSION_RATIO = 100
KNOWN_COLUMNS = (
    "id",
    "image",
    "gender",
    "masterCategory",
    "subCategory",
    "articleType",
    "baseColour",
    "season",
    "year",
    "usage",
    "productDisplayName",
)


class CatalogError(ValueError):
    """The whole source is unusable (not a zip/folder, no styles.csv, a missing column...)."""


@dataclass(frozen=True)
class Problem:
    """One row or file that was not imported, and why."""

    reason: str
    row: int | None = None
    sku: str = ""
    file: str = ""

    def as_dict(self) -> dict:
        return {"row": self.row, "sku": self.sku, "file": self.file, "reason": self.reason}


@dataclass(frozen=True)
class CatalogRow:
    """One product line of styles.csv, validated."""

    row: int  # 1-based data row number (the header is row 0)
    sku: str
    title: str
    category: str
    colour: str
    image: str  # member path inside the source
    attributes: dict = field(default_factory=dict)
    # The shopper filters (Garment fields of the same names); empty/None when the CSV lacks them.
    gender: str = ""
    season: str = ""
    usage: str = ""
    year: int | None = None


def is_safe_member(name: str) -> bool:
    """False for absolute paths, drive letters, and anything climbing out with ``..``."""
    if not name or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return False
    parts = PurePosixPath(name.replace("\\", "/")).parts
    return ".." not in parts


class CatalogSource:
    """A zip file or a folder, read-only, with per-member size limits."""

    def __init__(self, path: Path, *, max_file_bytes: int, max_total_bytes: int):
        self.path = Path(path)
        self.max_file_bytes = max_file_bytes
        self.problems: list[Problem] = []
        self._zip: zipfile.ZipFile | None = None
        self._names: dict[str, str] = {}  # normalised member name -> real name
        if self.path.is_dir():
            self._root = self.path
        elif zipfile.is_zipfile(self.path):
            self._zip = zipfile.ZipFile(self.path)
            self._index_zip(max_total_bytes)
        elif self.path.exists():
            raise CatalogError(f"{self.path.name} is neither a zip file nor a folder")
        else:
            raise CatalogError(f"{self.path} does not exist")

    def _index_zip(self, max_total_bytes: int) -> None:
        total = 0
        assert self._zip is not None
        for info in self._zip.infolist():
            if info.is_dir():
                continue
            if not is_safe_member(info.filename):
                self.problems.append(
                    Problem(file=info.filename, reason="unsafe path in zip (absolute or '..')")
                )
                continue
            ratio = info.file_size / info.compress_size if info.compress_size else 0
            if ratio > MAX_COMPRESSION_RATIO and info.file_size > 1024 * 1024:
                self.problems.append(
                    Problem(file=info.filename, reason=f"zip bomb: expands {int(ratio)}x")
                )
                continue
            total += info.file_size
            if total > max_total_bytes:
                raise CatalogError(
                    f"the zip expands to more than {max_total_bytes} bytes "
                    "(RETRIEVAL_MAX_IMPORT_BYTES); split it or raise the limit"
                )
            self._names[posixpath.normpath(info.filename)] = info.filename

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()

    def __enter__(self) -> CatalogSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- members

    def find_csv(self) -> str:
        """The styles.csv member closest to the root (a zip often wraps everything in a folder)."""
        candidates = []
        if self._zip is not None:
            candidates = [n for n in self._names if posixpath.basename(n) in CSV_NAMES]
        else:
            candidates = [
                str(p.relative_to(self._root)) for name in CSV_NAMES for p in self._root.rglob(name)
            ]
        if not candidates:
            raise CatalogError(f"no styles.csv in {self.path.name}")
        return min(candidates, key=lambda n: (n.count("/"), n))

    def exists(self, name: str) -> bool:
        if self._zip is not None:
            return posixpath.normpath(name) in self._names
        return is_safe_member(name) and (self._root / name).is_file()

    def size(self, name: str) -> int:
        if self._zip is not None:
            return self._zip.getinfo(self._names[posixpath.normpath(name)]).file_size
        return (self._root / name).stat().st_size

    def read(self, name: str) -> bytes:
        """The member's bytes; refuses what is over the per-file limit before reading it."""
        if not is_safe_member(name):
            raise CatalogError(f"unsafe path {name!r}")
        size = self.size(name)
        if size > self.max_file_bytes:
            raise CatalogError(
                f"{name} is {size} bytes, over the {self.max_file_bytes}-byte upload limit"
            )
        if self._zip is not None:
            with self._zip.open(self._names[posixpath.normpath(name)]) as handle:
                data = handle.read(self.max_file_bytes + 1)  # never trust the header's size
        else:
            data = (self._root / name).read_bytes()
        if len(data) > self.max_file_bytes:
            raise CatalogError(f"{name} is over the {self.max_file_bytes}-byte upload limit")
        return data


def decode_csv(data: bytes, *, name: str) -> tuple[str, Problem | None]:
    """UTF-8 (with or without BOM); anything else is read as Latin-1 and reported."""
    try:
        return data.decode("utf-8-sig"), None
    except UnicodeDecodeError as exc:
        problem = Problem(
            file=name,
            reason=f"not UTF-8 (byte {exc.start}); read as Latin-1, check accented titles",
        )
        return data.decode("latin-1"), problem


def read_rows(
    source: CatalogSource,
    *,
    category_field: str,
    limit: int | None = None,
    extra_columns: tuple[str, ...] = (),
) -> Iterator[CatalogRow | Problem]:
    """Validated rows of styles.csv, or a Problem for each row that cannot be imported.

    ``extra_columns``: columns besides :data:`KNOWN_COLUMNS` kept in the row's attributes
    when present and not empty (e.g. the shoppers' photos' ``sender``).
    """
    csv_name = source.find_csv()
    text, problem = decode_csv(source.read(csv_name), name=csv_name)
    if problem is not None:
        yield problem
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in next(reader, [])]
    except csv.Error as exc:
        raise CatalogError(f"{csv_name} has an unreadable header line: {exc}") from exc
    if "id" not in header:
        raise CatalogError(f"{csv_name} has no 'id' column (header: {','.join(header)[:200]})")
    if category_field not in header:
        raise CatalogError(
            f"{csv_name} has no {category_field!r} column to take categories from "
            f"(columns: {', '.join(header)})"
        )
    base = posixpath.dirname(csv_name)
    seen: set[str] = set()
    count = 0
    number = 0
    while True:
        if limit is not None and count >= limit:
            return
        number += 1
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            # A field over csv.field_size_limit() (131,072 characters), or a malformed line:
            # that row is refused, the reader goes on with the next line. (A quoted field
            # spanning lines may leave a stray fragment, refused as a row of its own.)
            yield Problem(row=number, reason=f"unreadable CSV row: {exc}")
            continue
        if not any(v.strip() for v in values):
            continue
        if len(values) > len(header):
            # Unquoted commas in the last column (productDisplayName) in the sample data.
            values = [*values[: len(header) - 1], ",".join(values[len(header) - 1 :])]
        record = {h: v.strip() for h, v in zip(header, values, strict=False)}
        sku = record.get("id", "")
        if any("\x00" in v for v in record.values()):
            # PostgreSQL text cannot hold NUL: one such row would fail its whole batch.
            yield Problem(
                row=number,
                sku=sku.replace("\x00", "")[:64],
                reason="a NUL character in the row (binary data in the CSV?)",
            )
            continue
        if not sku:
            yield Problem(row=number, reason="empty id")
            continue
        if len(sku) > 64:
            yield Problem(row=number, sku=sku[:64], reason="id longer than 64 characters")
            continue
        if sku in seen:
            yield Problem(row=number, sku=sku, reason="duplicate id in this file (first kept)")
            continue
        seen.add(sku)
        category = record.get(category_field, "")
        if not category:
            yield Problem(row=number, sku=sku, reason=f"empty {category_field}")
            continue
        image = record.get("image") or f"{sku}.jpg"
        member = posixpath.join(base, "images", image) if "/" not in image else image
        if not is_safe_member(member):
            yield Problem(row=number, sku=sku, file=image, reason="unsafe image path")
            continue
        if not source.exists(member):
            yield Problem(row=number, sku=sku, file=member, reason="image file missing")
            continue
        count += 1
        title = record.get("productDisplayName") or f"{category} {sku}"
        attributes = {
            k: record[k]
            for k in (*KNOWN_COLUMNS, *extra_columns)
            if k in record and k not in {"id", "image", "productDisplayName"} and record[k]
        }
        yield CatalogRow(
            row=number,
            sku=sku,
            title=title[:255],
            category=category[:100],
            colour=record.get("baseColour", "")[:50],
            image=member,
            attributes=attributes,
            gender=record.get("gender", "")[:20],
            season=record.get("season", "")[:20],
            usage=record.get("usage", "")[:30],
            year=parse_year(record.get("year", "")),
        )


def parse_year(text: str) -> int | None:
    """A catalogue year ("2012", "2012.0" from spreadsheets), None when blank or not a year."""
    try:
        year = int(float(text))
    except (ValueError, OverflowError):
        return None
    return year if 1900 <= year <= 2999 else None
