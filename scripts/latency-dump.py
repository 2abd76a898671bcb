#!/usr/bin/env python3
"""Summarises the per-message latencies `warren bench --latency-dump DIR` wrote.

    target/debug/warren bench --only latency --rounds 5 --rate 2000 --latency-dump /tmp/lat
    scripts/latency-dump.py /tmp/lat

One line per relay (warren, warren-swapping, raw, raw-v2) and offered rate,
over all its runs: the median of the runs' p50 and p99 (what the latency
table shows), then the shape of each run's slowest 1%:

- "isolated": slow messages whose neighbours in send order are not slow;
- "alternating": runs of three slow messages two apart with fast ones
  between (i, i+2, i+4 slow; i+1, i+3 not), per run. With two consumer
  channels RabbitMQ hands deliveries to them in turn, so one channel
  falling behind while the other flows shows as this pattern; a single
  consumer cannot make it;
- "bursts": runs of 5 or more consecutive slow messages, per run (a stall
  every relay sees: the broker, or the machine).

The standard library only.
"""

import collections
import csv
import pathlib
import re
import statistics
import sys

NAME = re.compile(r"^\d+-(\d+)-(.+)\.csv$")


def quantile(values, p):
    ordered = sorted(values)
    return ordered[round((len(ordered) - 1) * p)]


def shape(latencies):
    """(isolated, alternating, bursts of >= 5) among the slowest 1%."""
    n = len(latencies)
    threshold = quantile(latencies, 0.99)
    slow = [v >= threshold for v in latencies]
    isolated = sum(
        1 for i in range(1, n - 1) if slow[i] and not slow[i - 1] and not slow[i + 1]
    )
    alternating = sum(
        1
        for i in range(n - 4)
        if slow[i] and slow[i + 2] and slow[i + 4] and not slow[i + 1] and not slow[i + 3]
    )
    bursts, length = 0, 0
    for s in slow + [False]:
        if s:
            length += 1
        else:
            bursts += length >= 5
            length = 0
    return isolated, alternating, bursts


def main(folder):
    runs = collections.defaultdict(list)
    for path in sorted(pathlib.Path(folder).glob("*.csv")):
        m = NAME.match(path.name)
        if not m:
            continue
        with path.open() as f:
            latencies = [int(row["latency_us"]) for row in csv.DictReader(f) if row["latency_us"]]
        if latencies:
            runs[(int(m.group(1)), m.group(2))].append(latencies)
    if not runs:
        sys.exit(f"no latency dumps (NNN-RATE-RELAY.csv) in {folder}")
    print("| rate | relay | runs | p50 ms | p99 ms | isolated / run | alternating / run | bursts / run |")
    print("|---|---|---|---|---|---|---|---|")
    for (rate, relay), lats in sorted(runs.items()):
        p50 = statistics.median(quantile(l, 0.5) for l in lats) / 1e3
        p99 = statistics.median(quantile(l, 0.99) for l in lats) / 1e3
        shapes = [shape(l) for l in lats]
        per_run = [sum(s[k] for s in shapes) / len(lats) for k in range(3)]
        print(
            f"| {rate} | {relay} | {len(lats)} | {p50:.2f} | {p99:.2f} | "
            f"{per_run[0]:.1f} | {per_run[1]:.1f} | {per_run[2]:.1f} |"
        )


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
