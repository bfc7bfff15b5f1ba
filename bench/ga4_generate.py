"""Generating the sandbox's GA4 property: seconds for about 300,000 fact rows (3 days of 100,000).
Run by hand: `make bench` (or `uv run python -m bench.ga4_generate`; `--rows-per-day` to size it).

`generate_property` runs whenever a sandbox starts, so its speed is every test's start-up cost; it
was about a second for this size. Each round generates the property once, in this process; the
median round is the result. The test suite checks only what it makes (test_sandbox_ga4.py), never
how fast.
"""

import statistics

from bench.harness import END, arguments, seconds_of
from revenue_pipelines.sandbox.ga4_data import generate_property

DAYS = 3
TARGET_SECONDS = 2.0


def main() -> None:
    args = arguments(__doc__, "rows-per-day", 100_000)
    rounds = [seconds_of(lambda: generate_property(7, DAYS, END, args.rows_per_day).height) for _ in range(args.repeat)]
    print(f"\nGA4 property, seed 7, {DAYS} days of about {args.rows_per_day:,} rows, ending {END}\n")
    print(f"| round | {'rows':>9} | {'seconds':>7} | {'rows/s':>9} |")
    print(f"|-------|{'-' * 11}|{'-' * 9}|{'-' * 11}|")
    for number, (rows, seconds) in enumerate(rounds, start=1):
        print(f"| {number:>5} | {rows:>9,} | {seconds:>7.2f} | {rows / seconds:>9,.0f} |")
    median = statistics.median(seconds for _, seconds in rounds)
    print(f"\nmedian: {median:.2f} s (target: at most {TARGET_SECONDS:.1f} s)")


if __name__ == "__main__":
    main()
