"""Run mypy and hold its existing errors in a committed baseline (mypy-baseline.txt).

    python tools/mypy_baseline.py check    # fails on errors that are not in the baseline
    python tools/mypy_baseline.py update   # rewrites the baseline from the current errors

Extra arguments after ``--`` go to mypy (its configuration is [tool.mypy] in pyproject.toml).

An error is matched by (file, message) and counted, never by line number, so edits above an
old error do not make it new. One more error of a (file, message) pair than the baseline holds
fails; every current error with that pair is printed, as the script cannot tell which is new.
Line numbers inside messages ("defined on line 12") are blanked for the same reason.
Moving code to another file makes its errors new: run ``make mypy-baseline`` after a move.
Baseline entries that no longer occur are reported (they would let an error come back
unnoticed) but do not fail; ``update`` drops them.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASELINE = ROOT / "mypy-baseline.txt"
HEADER = (
    "# mypy errors held as a baseline: `make mypy` fails only on errors not listed here.\n"
    "# One line per error, `file: message  [code]`, without line numbers.\n"
    "# Regenerate with `make mypy-baseline` (after fixing errors, or after moving code).\n"
)
# Output mypy is asked for, whatever the user's own config says: one line per message.
MYPY_FLAGS = [
    "--no-pretty",
    "--no-color-output",
    "--show-error-codes",
    "--hide-column-numbers",
    "--hide-error-end",
    "--no-error-summary",
    "--hide-error-context",
]
ERROR = re.compile(r"^(?P<path>[^:\n]+):(?P<line>\d+): error: (?P<message>.*)$")
LINE_REF = re.compile(r"\bline \d+")

Key = tuple[str, str]


def run_mypy(extra: list[str]) -> tuple[int, list[str]]:
    env = dict(os.environ)
    # The django-stubs plugin imports fashionsite.settings, which starts the embedded
    # PostgreSQL and Redis when DATABASE_URL / REDIS_URL are unset: give it URLs to parse
    # instead (nothing connects to them). DJANGO_SECRET_KEY: no var/secret_key written.
    env.setdefault("DATABASE_URL", "postgresql://mypy@127.0.0.1:9/mypy")
    env.setdefault("REDIS_URL", "redis://127.0.0.1:9/0")
    env.setdefault("DJANGO_SECRET_KEY", "mypy-type-check-only")
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", *MYPY_FLAGS, *extra],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode not in (0, 1):  # 2: a crash, a bad config or a blocking error
        sys.stdout.write(proc.stdout)
        sys.stderr.write(proc.stderr)
        print(f"mypy failed (exit {proc.returncode})", file=sys.stderr)
        raise SystemExit(proc.returncode or 2)
    sys.stderr.write(proc.stderr)
    return proc.returncode, proc.stdout.splitlines()


def key_of(line: str) -> Key | None:
    match = ERROR.match(line)
    if match is None:
        return None
    path = Path(match["path"]).as_posix()
    return path, LINE_REF.sub("line N", match["message"].strip())


def errors_of(lines: list[str]) -> dict[Key, list[str]]:
    """Current errors by key, each with its output lines (notes are dropped)."""
    found: dict[Key, list[str]] = {}
    for line in lines:
        if ": note: " in line or not line.strip():
            continue
        key = key_of(line)
        if key is None:  # an error without a file and line: never in the baseline
            key = ("", line)
        found.setdefault(key, []).append(line)
    return found


def format_key(key: Key) -> str:
    return f"{key[0]}: {key[1]}"


def read_baseline(path: Path) -> Counter[Key]:
    held: Counter[Key] = Counter()
    if not path.exists():
        return held
    for raw in path.read_text().splitlines():
        if not raw.strip() or raw.startswith("#"):
            continue
        file, sep, message = raw.partition(": ")
        if not sep:
            raise SystemExit(f"{path}: malformed line {raw!r}")
        held[(file, message)] += 1
    return held


def write_baseline(path: Path, found: dict[Key, list[str]]) -> int:
    lines = sorted(format_key(key) for key, hits in found.items() for _ in hits)
    path.write_text(HEADER + "".join(f"{line}\n" for line in lines))
    return len(lines)


def check(found: dict[Key, list[str]], held: Counter[Key], baseline: Path) -> int:
    now = Counter({key: len(hits) for key, hits in found.items()})
    new = now - held
    gone = held - now
    total = sum(now.values())
    if gone:
        print(
            f"{sum(gone.values())} baseline error(s) no longer occur; "
            f"`make mypy-baseline` drops them from {baseline.name}:"
        )
        for key, count in sorted(gone.items()):
            print(f"  {format_key(key)}" + (f"  (x{count})" if count > 1 else ""))
    if not new:
        print(f"mypy: {total} error(s), none new ({sum(held.values())} in {baseline.name})")
        return 0
    print(f"mypy: {sum(new.values())} new error(s) not in {baseline.name}:")
    for key in sorted(new):
        hits = found[key]
        if held[key]:
            print(f"  ({len(hits)} of these now, {held[key]} in the baseline; one or more is new)")
        for line in hits:
            print(line)
    print(
        "Fix them (preferred), or if they are moved code, regenerate: `make mypy-baseline`.",
    )
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["check", "update"])
    parser.add_argument("--baseline", type=Path, default=BASELINE)
    parser.add_argument("mypy_args", nargs="*", help="after --: passed on to mypy")
    args = parser.parse_args(argv)
    _, lines = run_mypy(args.mypy_args)
    found = errors_of(lines)
    if args.command == "update":
        count = write_baseline(args.baseline, found)
        print(f"{args.baseline.name}: {count} error(s) held")
        return 0
    return check(found, read_baseline(args.baseline), args.baseline)


if __name__ == "__main__":
    sys.exit(main())
