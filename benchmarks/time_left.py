"""Benchmark 11: how true was a sweep's "time left in all"? Reads the plain progress lines a
sweep writes when its stderr is not a terminal (``HH:MM:SS phase: ..., H:MM:SS in all, ...``)
and prints the reading nearest 10, 50 and 90 % of its wall-clock beside the real time left.

    python -m sweeps.run --trials 50 > out.txt 2>&1; python -m benchmarks.time_left out.txt

The wall-clock runs from the first progress line (``--started`` to say otherwise) to the
log's last write (``--ended``), each HH:MM:SS; a sweep that passes midnight is followed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
from collections.abc import Sequence
from pathlib import Path

from harness import cli
from harness.errors import UserError

READING = re.compile(r"(\d\d:\d\d:\d\d) (.+?): .*?, ((?:\d+:)?\d\d:\d\d) in all")
SHARES = (0.1, 0.5, 0.9)


def clock(text: str) -> dt.time:
    """An argparse type, and the progress lines' times: HH:MM:SS."""
    try:
        return dt.time.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a time of day as HH:MM:SS") from None


def seconds(text: str) -> int:
    """'1:05:30' or '05:30' as seconds."""
    return sum(int(part) * 60 ** power for power, part in enumerate(reversed(text.split(":"))))


def readings(lines: Sequence[str], day: dt.date) -> list[tuple[dt.datetime, str, int]]:
    """(when, phase, seconds left in all) of each progress line, in order; a time earlier
    than the one before is the next day's."""
    found, offset, last = [], dt.timedelta(0), None
    for line in lines:
        match = READING.match(line)
        try:
            when = dt.datetime.combine(day, dt.time.fromisoformat(match.group(1))) + offset if match else None
        except ValueError:  # not a time of day: not a progress line
            when = None
        if when is None:
            continue
        if last is not None and when < last:
            offset += dt.timedelta(days=1)
            when += dt.timedelta(days=1)
        found.append((when, match.group(2), seconds(match.group(3))))
        last = when
    return found


def nearest(found: list[tuple[dt.datetime, str, int]], started: dt.datetime, ended: dt.datetime) -> list[dict]:
    """For each share of the wall-clock, the reading nearest it and how far off it was."""
    total = (ended - started).total_seconds()
    rows = []
    for share in SHARES:
        at = started + dt.timedelta(seconds=share * total)
        when, phase, said = min(found, key=lambda reading: abs((reading[0] - at).total_seconds()))
        real = (ended - when).total_seconds()
        rows.append({"share": share, "when": when, "phase": phase, "said": said, "real": real,
                     "off": (said - real) / real if real > 0 else float("nan")})
    return rows


def as_clock(value: float) -> str:
    value = int(round(value))
    return f"{value // 3600}:{value % 3600 // 60:02d}:{value % 60:02d}"


def parse_args(argv: Sequence[str] | None):
    parser = cli.ArgumentParser(prog="python -m benchmarks.time_left", description=__doc__.splitlines()[0])
    parser.add_argument("log", type=Path, help="a sweep's redirected output")
    parser.add_argument("--started", metavar="HH:MM:SS", type=clock, help="when the command began (default: its first progress line)")
    parser.add_argument("--ended", metavar="HH:MM:SS", type=clock, help="when it ended (default: the log's last write)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        text = args.log.read_text(encoding="utf-8", errors="replace")
        written = dt.datetime.fromtimestamp(args.log.stat().st_mtime)
    except OSError as error:
        raise UserError(f"{args.log}: cannot read it ({error.strerror})") from None
    found = readings(text.splitlines(), written.date())
    if not found:
        raise UserError(f"{args.log}: no progress line with a time left in all (was stderr a terminal?)")
    if found[-1][0] > written:  # the lines began days before the log's last write
        back = dt.timedelta(days=(found[-1][0] - written).days + 1)
        found = [(when - back, phase, said) for when, phase, said in found]
    started = found[0][0]
    if args.started is not None:
        started = dt.datetime.combine(started.date(), args.started)
        started -= dt.timedelta(days=1) if started > found[0][0] else dt.timedelta(0)
    if args.ended is None:
        ended = written
    else:
        ended = dt.datetime.combine(found[-1][0].date(), args.ended)
        ended += dt.timedelta(days=1) if ended < found[-1][0] else dt.timedelta(0)
    if ended <= started:
        raise UserError(f"the sweep must end after it starts ({ended:%H:%M:%S} is not after {started:%H:%M:%S})")
    print(f"{args.log}: {started:%H:%M:%S} - {ended:%H:%M:%S}, {(ended - started).total_seconds() / 60:.1f} min, "
          f"{len(found)} progress lines\n")
    print("| reading at | phase | said, in all | real | off by |\n| --- | --- | --- | --- | --- |")
    for row in nearest(found, started, ended):
        print(f"| {row['share']:.0%} ({row['when']:%H:%M:%S}) | {row['phase']} | {as_clock(row['said'])} | "
              f"{as_clock(row['real'])} | {row['off']:+.0%} |")
    return 0


if __name__ == "__main__":
    cli.run(main)
