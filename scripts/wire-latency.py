#!/usr/bin/env python3
"""Splits the latency table's runs into their legs, from a capture on loopback.

    tcpdump -i lo -s 0 -B 131072 -w /tmp/lat.pcap 'tcp port 5672' &
    target/debug/warren bench --only latency --rounds 3 --rate 2000
    kill %1; scripts/wire-latency.py /tmp/lat.pcap

`warren bench`'s latency runs tag each message `lat-N` (message and
correlation id). Every frame that carries a tag is timed where it crossed
loopback: the sender's publish, the relay's delivery, the relay's publish of
the output, the receiver's delivery. Each run is a triple of connections
(sender, relay, receiver) in that order; a relay whose outputs carry
warren's type stamp (`warren/1/<version>`) is warren (two versions: the
swapping run), any other is the raw relay. Per run, per leg: p50, p90, p99
and max in ms. "relay" (delivery -> output publish) is the relay's own
time; the broker's legs are RabbitMQ's (and the machine's).

Reads pcap files (Ethernet, Linux cooked v1/v2; micro- or nanosecond
stamps); the standard library only.
"""

import collections
import re
import struct
import sys

TAG = re.compile(rb"lat-(\d+)")
STAMP = re.compile(rb"warren/1/([0-9a-f]{12})")
AMQP_PORT = 5672


def packets(path):
    """(time, source port, destination port, TCP payload) of each packet."""
    with open(path, "rb") as f:
        header = f.read(24)
        magic = struct.unpack("<I", header[:4])[0]
        if magic not in (0xA1B2C3D4, 0xA1B23C4D):
            sys.exit(f"{path}: not a little-endian pcap file")
        scale = 1e9 if magic == 0xA1B23C4D else 1e6
        link = struct.unpack("<I", header[20:24])[0]
        skip = {1: 14, 113: 16, 276: 20}.get(link)
        if skip is None:
            sys.exit(f"{path}: link type {link} not handled")
        while True:
            record = f.read(16)
            if len(record) < 16:
                return
            sec, frac, size, _ = struct.unpack("<IIII", record)
            data = f.read(size)
            ip = data[skip:]
            if len(ip) < 20 or ip[0] >> 4 != 4:
                continue
            tcp = ip[(ip[0] & 15) * 4 :]
            sport, dport = struct.unpack(">HH", tcp[:4])
            payload = tcp[(tcp[12] >> 4) * 4 :]
            if payload:
                yield sec + frac / scale, sport, dport, payload


def quantile(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round((len(xs) - 1) * p)))]


def main(path):
    # Per client port: (time, 'P'ublished by it | 'D'elivered to it, n).
    events = collections.defaultdict(list)
    versions = collections.defaultdict(set)
    for ts, sport, dport, payload in packets(path):
        to_broker = dport == AMQP_PORT
        client = sport if to_broker else dport
        if to_broker:
            versions[client].update(STAMP.findall(payload))
        for n in {int(m) for m in TAG.findall(payload)}:
            events[client].append((ts, "P" if to_broker else "D", n))
    ports = sorted(events, key=lambda p: events[p][0][0])
    if len(ports) % 3:
        print(f"warning: {len(ports)} tagged connections, not triples", file=sys.stderr)
    legs = ("broker in", "relay", "broker out", "end to end")
    print("| run | relay | leg | p50 | p90 | p99 | max |")
    print("|---|---|---|---|---|---|---|")
    for run, i in enumerate(range(0, len(ports) - 2, 3), 1):
        sender, relay, receiver = ports[i : i + 3]
        first = lambda port, kind: {n: t for t, k, n in reversed(events[port]) if k == kind}
        sent, taken, out, arrived = (
            first(sender, "P"),
            first(relay, "D"),
            first(relay, "P"),
            first(receiver, "D"),
        )
        spans = (
            (sent, taken),
            (taken, out),
            (out, arrived),
            (sent, arrived),
        )
        kind = {0: "raw", 1: "warren"}.get(len(versions[relay]), "warren, swapping")
        for leg, (a, b) in zip(legs, spans):
            ms = [(b[n] - a[n]) * 1e3 for n in a if n in b]
            if not ms:
                continue
            cells = " | ".join(f"{quantile(ms, p):.3f}" for p in (0.5, 0.9, 0.99))
            print(f"| {run} | {kind} | {leg} | {cells} | {max(ms):.2f} |")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
