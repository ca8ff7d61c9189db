"""Reading import sources: rows, problems, and refusal of unsafe zips (no database)."""

from __future__ import annotations

import zipfile

import pytest

from retrieval.catalogue.source import (
    CatalogError,
    CatalogRow,
    CatalogSource,
    Problem,
    is_safe_member,
    read_rows,
)
from tests.factories import jpeg_bytes

HEADER = (
    "id,image,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,"
    "productDisplayName\n"
)


def make_zip(path, members: dict[str, bytes], *, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def source(path, **kw):
    return CatalogSource(
        path,
        max_file_bytes=kw.get("max_file_bytes", 10_000_000),
        max_total_bytes=kw.get("max_total_bytes", 10**9),
    )


def split(items):
    rows = [i for i in items if isinstance(i, CatalogRow)]
    problems = [i for i in items if isinstance(i, Problem)]
    return rows, problems


def test_reads_rows_with_commas_in_titles_and_reports_each_bad_row(tmp_path):
    csv = HEADER + (
        "1,1.jpg,Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,Red tee, slim fit\n"
        "2,2.jpg,Men,Apparel,Topwear,,Blue,Summer,2012,Casual,No category\n"
        "1,1.jpg,Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,Duplicate\n"
        "3,3.jpg,Men,Apparel,Topwear,Shirts,Blue,Summer,2012,Casual,Missing image\n"
        "4,../../etc/passwd,Men,Apparel,Topwear,Shirts,Blue,Summer,2012,Casual,Traversal\n"
    )
    path = make_zip(
        tmp_path / "c.zip",
        {"styles.csv": csv.encode(), "images/1.jpg": jpeg_bytes(), "images/2.jpg": jpeg_bytes()},
    )
    with source(path) as src:
        rows, problems = split(list(read_rows(src, category_field="articleType")))
    assert [(r.sku, r.title, r.category, r.colour) for r in rows] == [
        ("1", "Red tee, slim fit", "Tshirts", "Red")
    ]
    reasons = {p.row: p.reason for p in problems}
    assert "empty articleType" in reasons[2]
    assert "duplicate" in reasons[3]
    assert "missing" in reasons[4]
    assert "unsafe" in reasons[5]


def test_unsafe_members_and_zip_bombs_are_refused_the_rest_is_read(tmp_path):
    csv = HEADER + "1,1.jpg,Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,Tee\n"
    path = tmp_path / "evil.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("styles.csv", csv)
        zf.writestr("images/1.jpg", jpeg_bytes())
        zf.writestr("../../x", b"escape")
        zf.writestr("/etc/cron.d/evil", b"absolute")
        zf.writestr("images/bomb.jpg", b"\0" * (20 * 1024 * 1024))
    with source(path) as src:
        files = {p.file: p.reason for p in src.problems}
        rows, _ = split(list(read_rows(src, category_field="articleType")))
    assert "unsafe" in files["../../x"]
    assert "unsafe" in files["/etc/cron.d/evil"]
    assert "zip bomb" in files["images/bomb.jpg"]
    assert [r.sku for r in rows] == ["1"]


def test_a_zip_larger_than_the_import_limit_is_refused_whole(tmp_path):
    path = make_zip(
        tmp_path / "big.zip", {"styles.csv": HEADER.encode(), "images/1.jpg": b"x" * 5000}
    )
    with pytest.raises(CatalogError, match="RETRIEVAL_MAX_IMPORT_BYTES"):
        source(path, max_total_bytes=1000)


def test_files_over_the_upload_limit_are_refused_before_reading(tmp_path):
    path = make_zip(
        tmp_path / "c.zip", {"styles.csv": HEADER.encode(), "images/1.jpg": b"x" * 5000}
    )
    with source(path, max_file_bytes=1000) as src, pytest.raises(CatalogError, match="limit"):
        src.read("images/1.jpg")


def test_non_utf8_csv_is_read_and_reported(tmp_path):
    csv = (HEADER + "1,1.jpg,Women,Apparel,Topwear,Tops,Red,Summer,2012,Casual,Café top\n").encode(
        "latin-1"
    )
    path = make_zip(tmp_path / "c.zip", {"styles.csv": csv, "images/1.jpg": jpeg_bytes()})
    with source(path) as src:
        rows, problems = split(list(read_rows(src, category_field="articleType")))
    assert rows[0].title == "Café top"
    assert any("not UTF-8" in p.reason for p in problems)


def test_a_folder_works_like_a_zip_and_limit_counts_valid_rows(tmp_path):
    (tmp_path / "images").mkdir()
    lines = [HEADER.rstrip("\n")]
    for i in range(1, 6):
        (tmp_path / "images" / f"{i}.jpg").write_bytes(jpeg_bytes())
        lines.append(f"{i},{i}.jpg,Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,Tee {i}")
    (tmp_path / "styles.csv").write_text("\n".join(lines) + "\n")
    with source(tmp_path) as src:
        rows, _ = split(list(read_rows(src, category_field="articleType", limit=3)))
    assert [r.sku for r in rows] == ["1", "2", "3"]
    assert rows[0].attributes["gender"] == "Men"


def test_missing_category_column_fails_the_whole_import(tmp_path):
    path = make_zip(
        tmp_path / "c.zip", {"styles.csv": b"id,image\n1,1.jpg\n", "images/1.jpg": jpeg_bytes()}
    )
    with source(path) as src, pytest.raises(CatalogError, match="articleType"):
        list(read_rows(src, category_field="articleType"))


def test_not_a_zip_is_a_clear_error(tmp_path):
    bad = tmp_path / "x.zip"
    bad.write_bytes(b"hello")
    with pytest.raises(CatalogError, match="neither a zip"):
        source(bad)


@pytest.mark.parametrize("name", ["../x", "a/../../x", "/abs", "C:/win", "\\\\server\\x"])
def test_unsafe_member_names(name):
    assert not is_safe_member(name)


def test_safe_member_names():
    assert is_safe_member("images/1.jpg")
    assert is_safe_member("fashion/images/1.jpg")
