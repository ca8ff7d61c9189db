"""Write demo/catalogue.zip: a small, stratified subset of the shared sample catalogue.

    .venv/bin/python tools/make_demo_catalogue.py [--source PATH/fashion-product-images-small.zip]

Every articleType with at least MIN_SOURCE_IMAGES images in the source keeps a share of its
images proportional to its size (at least PER_TYPE_MIN), chosen at random with a fixed seed
among rows with a gender, colour, season and usage, so the filters have values to offer. The
zip holds styles.csv, images/ and README.md (the source's attribution and licence note).
Deterministic: the same source gives the same zip, byte for byte.
"""

from __future__ import annotations

import argparse
import csv
import io
import random
import zipfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET_ROWS = 3000
PER_TYPE_MIN = 8
MIN_SOURCE_IMAGES = 30
SEED = 15
FIXED_TIME = (2024, 1, 1, 0, 0, 0)

README = """# Demo catalogue (fashionsite)

{rows:,} products in {types} categories, a stratified subset of the Kaggle dataset
"Fashion Product Images (Small)" (paramaggarwal), a reduced copy of the Myntra product
catalogue, as shared with this project in fashion-product-images-small.zip (its images were
re-encoded once with Pillow there). The Kaggle page lists the dataset under the MIT licence
(not re-checked offline). Made by tools/make_demo_catalogue.py; `make run` imports it when the
catalogue is empty and no CATALOG is given.

Format: styles.csv (id,image,gender,masterCategory,subCategory,articleType,baseColour,season,
year,usage,productDisplayName) and images/<id>.jpg, mostly 60x80 px studio shots.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source", type=Path, default=ROOT.parent / "shared/data/fashion-product-images-small.zip"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "demo/catalogue.zip")
    args = parser.parse_args()
    with zipfile.ZipFile(args.source) as source:
        csv_name = min((n for n in source.namelist() if n.endswith("styles.csv")), key=len)
        base = csv_name.rsplit("/", 1)[0] + "/" if "/" in csv_name else ""
        text = source.read(csv_name).decode("utf-8-sig")
        reader = csv.reader(io.StringIO(text))
        header = next(reader)
        names = set(source.namelist())
        by_type: dict[str, list[list[str]]] = defaultdict(list)
        for values in reader:
            if len(values) > len(header):  # unquoted commas in productDisplayName
                values = [*values[: len(header) - 1], ",".join(values[len(header) - 1 :])]
            row = dict(zip(header, values, strict=False))
            complete = all(row.get(k) for k in ("gender", "baseColour", "season", "usage"))
            if complete and f"{base}images/{row['id']}.jpg" in names:
                by_type[row["articleType"]].append(values)
        eligible = {t: rows for t, rows in by_type.items() if len(rows) >= MIN_SOURCE_IMAGES}
        total = sum(len(rows) for rows in eligible.values())
        rng = random.Random(SEED)
        chosen = []
        for article_type in sorted(eligible):
            rows = sorted(eligible[article_type], key=lambda v: int(v[0]))
            n = max(PER_TYPE_MIN, round(len(rows) * TARGET_ROWS / total))
            chosen += rng.sample(rows, min(n, len(rows)))
        chosen.sort(key=lambda v: int(v[0]))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        out_csv = io.StringIO()
        writer = csv.writer(out_csv, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(chosen)
        with zipfile.ZipFile(args.out, "w") as out:

            def add(name: str, data: bytes, method: int) -> None:
                info = zipfile.ZipInfo(name, date_time=FIXED_TIME)
                info.compress_type = method
                out.writestr(info, data)

            add("README.md", README.format(rows=len(chosen), types=len(eligible)).encode(),
                zipfile.ZIP_DEFLATED)  # fmt: skip
            add("styles.csv", out_csv.getvalue().encode(), zipfile.ZIP_DEFLATED)
            for values in chosen:
                data = source.read(f"{base}images/{values[0]}.jpg")
                add(f"images/{values[0]}.jpg", data, zipfile.ZIP_STORED)  # JPEGs do not shrink
    size = args.out.stat().st_size
    print(f"{args.out}: {len(chosen)} products, {len(eligible)} categories, {size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
