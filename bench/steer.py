"""Steering benchmark: 100k announced prefixes over 5k appliances.

Measures the pure core only (the API's request-rate p99 belongs with the API benchmark): prefix
table build time, longest-prefix-match lookups per second, and steering decisions per second with
their p99, without and with the full per-appliance explanation.  The reference, measured in the same
run on a sample of the same clients, is the obvious implementation: a linear scan of every prefix
(with ``ipaddress`` containment) and a Python loop over every appliance.  Answers are cross-checked
against it, and the ratios are printed.

    .venv/bin/python bench/steer.py [--prefixes 100000] [--appliances 5000] [--seed 1]
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import math
import random
import statistics
import time

from control.prefixes import PrefixTable, parse_ip
from control.steering import ApplianceView, GeoPoint, SteeringIndex, great_circle_km


def build_fleet(rng: random.Random, n_appliances: int, n_prefixes: int, n_titles: int) -> list[ApplianceView]:
    per = max(1, n_prefixes // n_appliances)
    seen: set[str] = set()
    fleet = []
    for i in range(n_appliances):
        prefixes: list[str] = []
        while len(prefixes) < per:
            net: ipaddress.IPv4Network | ipaddress.IPv6Network
            if rng.random() < 0.7:
                length = rng.choice([16, 18, 20, 22, 23, 24, 24, 24])
                net = ipaddress.IPv4Network((rng.getrandbits(32) >> (32 - length) << (32 - length), length))
            else:
                length = rng.choice([32, 36, 40, 44, 48, 48])
                top = (0x2000 | rng.getrandbits(12)) << 112
                net = ipaddress.IPv6Network(((top | rng.getrandbits(112)) >> (128 - length) << (128 - length), length))
            if str(net) not in seen:
                seen.add(str(net))
                prefixes.append(str(net))
        titles = frozenset(f"t{rng.randrange(n_titles)}" for _ in range(n_titles // 5))
        fleet.append(ApplianceView(
            f"app-{i}", f"site-{i // 4}", 64512 + i // 8, tuple(prefixes),
            GeoPoint(rng.uniform(-60, 70), rng.uniform(-180, 180)), rng.random() > 0.05, rng.random() < 0.02,
            rng.uniform(0, 1.1), 1.0, titles))
    return fleet


def clients(rng: random.Random, fleet: list[ApplianceView], n: int) -> list[str]:
    out = []
    for _ in range(n):
        if rng.random() < 0.9:
            net = ipaddress.ip_network(rng.choice(rng.choice(fleet).prefixes))
            out.append(str(net.network_address + rng.randrange(min(net.num_addresses, 2**62))))
        else:
            out.append(str(ipaddress.IPv4Address(rng.getrandbits(32))))
    return out


class Reference:
    """The straightforward implementation: scan everything, every time."""

    def __init__(self, fleet: list[ApplianceView]) -> None:
        self.fleet = fleet
        self.nets = [(ipaddress.ip_network(p), i) for i, a in enumerate(fleet) for p in a.prefixes]

    def lookup(self, client: str) -> tuple[str, tuple[int, ...]] | None:
        ip = parse_ip(client)
        best: tuple[int, str] | None = None
        owners: list[int] = []
        for net, i in self.nets:
            if net.version == ip.version and ip in net:
                if best is None or net.prefixlen > best[0]:
                    best, owners = (net.prefixlen, str(net)), [i]
                elif net.prefixlen == best[0]:
                    owners.append(i)
        return None if best is None else (best[1], tuple(owners))

    def steer(self, client: str, title: str, count: int = 3) -> list[str]:
        hit = self.lookup(client)
        owners = hit[1] if hit else ()
        asns = {self.fleet[i].asn for i in owners} - {0}
        sites = {self.fleet[i].site for i in owners}
        where = next((self.fleet[i].location for i in owners if self.fleet[i].location), None)
        keyed = []
        for i, a in enumerate(self.fleet):
            if not a.online or a.draining or a.load >= a.load_threshold or title not in a.titles:
                continue
            tier = 0 if i in owners else 1 if a.asn in asns else 2 if a.site in sites else 3
            dist = great_circle_km(where, a.location) if where and a.location else math.inf
            keyed.append((tier, dist, a.load / a.load_threshold, a.appliance_id))
        keyed.sort()
        return [k[3] for k in keyed[:count]]


def p99(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100)[98]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prefixes", type=int, default=100_000)
    parser.add_argument("--appliances", type=int, default=5_000)
    parser.add_argument("--titles", type=int, default=500)
    parser.add_argument("--decisions", type=int, default=20_000)
    parser.add_argument("--reference-sample", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    fleet = build_fleet(rng, args.appliances, args.prefixes, args.titles)
    ips = clients(rng, fleet, args.decisions)
    titles = [f"t{rng.randrange(args.titles)}" for _ in ips]
    print(f"fleet: {len(fleet)} appliances, {sum(len(a.prefixes) for a in fleet)} prefixes, {args.titles} titles")

    t0 = time.perf_counter()
    table = PrefixTable((p, i) for i, a in enumerate(fleet) for p in a.prefixes)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    index = SteeringIndex(fleet, prefixes=table)
    index_s = time.perf_counter() - t0
    print(f"build: prefix table {build_s:.2f} s, steering index {index_s:.2f} s")

    reference = Reference(fleet)
    sample = ips[: args.reference_sample]
    t0 = time.perf_counter()
    ref_hits = [reference.lookup(ip) for ip in sample]
    ref_lookup_s = (time.perf_counter() - t0) / len(sample)
    t0 = time.perf_counter()
    for ip in ips:
        table.lookup(ip)
    lookup_s = (time.perf_counter() - t0) / len(ips)
    for ip, want in zip(sample, ref_hits, strict=True):
        hit = table.lookup(ip)
        assert (None if hit is None else (str(hit.prefix), hit.values)) == want, ip
    print(f"LPM: {1 / lookup_s:,.0f} lookups/s vs brute-force scan {1 / ref_lookup_s:,.1f} lookups/s "
          f"-> ratio {ref_lookup_s / lookup_s:,.0f}x (answers identical on {len(sample)} clients)")

    latencies = []
    for ip, title in zip(ips, titles, strict=True):
        t = time.perf_counter_ns()
        index.steer(ip, title, explain=False)
        latencies.append((time.perf_counter_ns() - t) / 1e3)
    fast_s = sum(latencies) / len(latencies) / 1e6
    # The tail above is mostly full garbage collections walking the snapshot's objects; a daemon that
    # freezes the heap after building a snapshot (gc.freeze) avoids them.  Measured the same way:
    gc.freeze()
    frozen = []
    for ip, title in zip(ips, titles, strict=True):
        t = time.perf_counter_ns()
        index.steer(ip, title, explain=False)
        frozen.append((time.perf_counter_ns() - t) / 1e3)
    gc.unfreeze()
    explained = []
    for ip, title in zip(ips[:300], titles[:300], strict=True):
        t = time.perf_counter_ns()
        index.steer(ip, title, explain=True)
        explained.append((time.perf_counter_ns() - t) / 1e3)
    t0 = time.perf_counter()
    ref_answers = [reference.steer(ip, title) for ip, title in zip(sample, titles[: len(sample)], strict=True)]
    ref_steer_s = (time.perf_counter() - t0) / len(sample)
    for ip, title, ranked in zip(sample, titles[: len(sample)], ref_answers, strict=True):
        assert index.steer(ip, title, explain=False).appliance_ids == ranked, (ip, title)
    print(f"steer (top 3): {1 / fast_s:,.0f} decisions/s, p50 {statistics.median(latencies):,.0f} us, "
          f"p99 {p99(latencies):,.0f} us")
    print(f"steer (top 3) after gc.freeze(): {1e6 / statistics.mean(frozen):,.0f} decisions/s, "
          f"p50 {statistics.median(frozen):,.0f} us, p99 {p99(frozen):,.0f} us (p99 unfrozen/frozen "
          f"{p99(latencies) / p99(frozen):.1f}x)")
    print(f"steer with every appliance explained: {1e6 / statistics.mean(explained):,.0f} decisions/s, "
          f"p99 {p99(explained):,.0f} us")
    print(f"reference (scan + Python loop): {1 / ref_steer_s:,.1f} decisions/s -> ratio {ref_steer_s / fast_s:,.0f}x "
          f"(answers identical on {len(sample)} clients)")


if __name__ == "__main__":
    main()
