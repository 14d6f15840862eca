#!/usr/bin/env python3
"""compare.sh's report: medians over rounds from results.tsv, ratios, replay-ingest's CPU split,
fsync against os, the compactor against ingest, and the goal checks.

In: results.tsv (one line per run; columns in compare.sh). Out: Markdown tables on stdout, and
RESULTS.ingest-mix-rps (the ingest mix median, for the open-loop run that follows).
Ratios are of medians (medians over rounds of each side), as in earlier runs; the goal lines
also give the range of the per-round ratios (rounds paired by number).
"""
import csv
import statistics
import sys

path = sys.argv[1]
rows = list(csv.DictReader(open(path), delimiter="\t"))


def num(r, k):
    try:
        return float(r[k])
    except (ValueError, KeyError, TypeError):
        return 0.0


def med(xs):
    return statistics.median(xs) if xs else None


targets, scenarios = [], []
for r in rows:
    if r["target"] not in targets:
        targets.append(r["target"])
    if r["scenario"] not in scenarios:
        scenarios.append(r["scenario"])

# Per (target, scenario): one dict of figures per round.
runs = {}
for r in rows:
    n, dur = num(r, "requests"), num(r, "duration_us")
    if n <= 0 or dur <= 0:
        continue
    secs = dur / 1e6
    f = {
        "round": r["round"],
        "rps": n / secs,
        "mbs": num(r, "body_bytes") / dur,
        "cpu": num(r, "server_cpu_us") / n,
        "p99": num(r, "p99_us"),
        "err": num(r, "errors"),
        "hwm": num(r, "hwm_kib") / 1024,
    }
    if r["target"].startswith("ingest"):
        f["worker"] = num(r, "cpu_worker_us") / n
        f["compactor"] = num(r, "cpu_compactor_us") / n
        f["segsvc"] = num(r, "cpu_segsvc_us") / n
        f["otherbg"] = num(r, "cpu_otherbg_us") / n
        f["bg"] = f["compactor"] + f["segsvc"] + f["otherbg"]
        f["cu_bg"] = (num(r, "cu_compactor_us") + num(r, "cu_otherbg_us")) / n
        f["catchup_s"] = num(r, "catchup_ms") / 1000
        f["lag_mib"] = num(r, "lag_end_bytes") / 2**20
        raw, out = num(r, "raw_bytes"), num(r, "file_bytes")
        f["raw"] = raw
        # What the node stored per second of load, and what the compactor got through in that
        # time: everything it compacted (by its exit summary) less what was still unread when
        # the load ended (less, too, the open segments it compacted at shutdown: at most one
        # segment per worker, not measured, so this is an upper bound).
        f["ingest_mbs"] = raw / dur
        f["compact_mbs"] = max(0.0, raw - num(r, "lag_end_bytes")) / dur
        f["ratio"] = raw / out if out > 0 else 0.0
        cpu_c = num(r, "cpu_compactor_us") + num(r, "cu_compactor_us")
        f["compact_capacity"] = raw / cpu_c if cpu_c > 0 else 0.0  # bytes per CPU-µs = MB/CPU-s
        f["forced"] = num(r, "forced_out")
        f["rpf"] = num(r, "recs_per_flush")
        f["du_gib"] = num(r, "du_end_bytes") / 2**30
    runs.setdefault((r["target"], r["scenario"]), []).append(f)


def m(t, s, k):
    return med([f[k] for f in runs.get((t, s), []) if k in f])


def rounds_ratio(ta, tb, s, ka, kb=None):
    """Range of per-round ratios a[ka] / b[kb], rounds paired by number."""
    kb = kb or ka
    b = {f["round"]: f[kb] for f in runs.get((tb, s), [])}
    rs = [f[ka] / b[f["round"]] for f in runs.get((ta, s), []) if b.get(f["round"])]
    if not rs:
        return ""
    return f" (per round {min(rs):.2f}-{max(rs):.2f}x, n={len(rs)})"


def ratio(a, b):
    return a / b if a is not None and b else None


def fx(x, digits=2):
    return f"{x:.{digits}f}x" if x is not None else "-"


print("\nMedians (n = rounds); CPU = server utime+stime per answered request; ratios are replay-ingest / peer.\n")
print("| scenario | target | req/s | MB/s | server CPU µs/req | p99 µs | errors | peak RSS MiB | n |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for s in scenarios:
    for t in targets:
        if (t, s) in runs:
            print(
                f"| {s} | {t} | {m(t, s, 'rps'):.0f} | {m(t, s, 'mbs'):.1f} | {m(t, s, 'cpu'):.1f} "
                f"| {m(t, s, 'p99'):.0f} | {m(t, s, 'err'):.0f} | {m(t, s, 'hwm'):.1f} | {len(runs[(t, s)])} |"
            )

ingests = [t for t in targets if t.startswith("ingest")]
if ingests:
    print("\n| scenario | target | req/s vs nginx | CPU/req vs nginx | request-path CPU/req vs nginx | MB/s vs nginx | req/s vs ref-go | CPU/req vs ref-go |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for s in scenarios:
        for t in ingests:
            if (t, s) not in runs:
                continue
            print(
                f"| {s} | {t} | {fx(ratio(m(t, s, 'rps'), m('nginx', s, 'rps')))} "
                f"| {fx(ratio(m(t, s, 'cpu'), m('nginx', s, 'cpu')))} "
                f"| {fx(ratio(m(t, s, 'worker'), m('nginx', s, 'cpu')))} "
                f"| {fx(ratio(m(t, s, 'mbs'), m('nginx', s, 'mbs')))} "
                f"| {fx(ratio(m(t, s, 'rps'), m('refgo', s, 'rps')))} "
                f"| {fx(ratio(m(t, s, 'cpu'), m('refgo', s, 'cpu')))} |"
            )

    print("\nreplay-ingest CPU per request by thread, µs (medians): the request path (worker-N and prepare-N threads)")
    print("and the background (compactor, segment-service, the rest: main thread, exited threads)")
    print("during the load; then the background's CPU while the compactor caught up after the load.\n")
    print("| scenario | target | request path | compactor | segment-service | other | background during | background catch-up | total with catch-up | catch-up s |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for s in scenarios:
        for t in ingests:
            if (t, s) not in runs:
                continue
            total = [f["worker"] + f["bg"] + f["cu_bg"] for f in runs[(t, s)]]
            print(
                f"| {s} | {t} | {m(t, s, 'worker'):.1f} | {m(t, s, 'compactor'):.1f} | {m(t, s, 'segsvc'):.1f} "
                f"| {m(t, s, 'otherbg'):.1f} | {m(t, s, 'bg'):.1f} | {m(t, s, 'cu_bg'):.1f} | {med(total):.1f} "
                f"| {m(t, s, 'catchup_s'):.1f} |"
            )

    print("\nThe compactor against ingest (replay-ingest, \"os\"; medians). Ingest MB/s: bytes stored per")
    print("second of load (the compactor's exit summary, bytes in); compactor MB/s: of those, what it had")
    print("read by the end of the load (an upper bound by the open segments it compacts at shutdown);")
    print("capacity: bytes in per second of the compactor thread's CPU (load and catch-up).\n")
    print("| scenario | ingest MB/s | compactor MB/s during load | compactor / ingest | lag at end MiB | catch-up s | data dir at end GiB | capacity MB per CPU-s | compression (bytes in / out) | forced out |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for s in scenarios:
        t = "ingest"
        if (t, s) not in runs:
            continue
        rel = med([f["compact_mbs"] / f["ingest_mbs"] for f in runs[(t, s)] if f["ingest_mbs"] > 0])
        print(
            f"| {s} | {m(t, s, 'ingest_mbs'):.0f} | {m(t, s, 'compact_mbs'):.0f} | {fx(rel)} | {m(t, s, 'lag_mib'):.0f} "
            f"| {m(t, s, 'catchup_s'):.1f} | {m(t, s, 'du_gib'):.2f} | {m(t, s, 'compact_capacity'):.0f} "
            f"| {m(t, s, 'ratio'):.1f} | {m(t, s, 'forced'):.0f} |"
        )

    if "ingest-fsync" in targets:
        print("\nfsync against os (medians; records per flush: the workers' group-commit counts at exit).\n")
        print("| scenario | os req/s | fsync req/s | fsync / os | os p99 µs | fsync p99 µs | os CPU µs/req | fsync CPU µs/req | records per flush |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for s in scenarios:
            if ("ingest-fsync", s) not in runs or ("ingest", s) not in runs:
                continue
            a, b = "ingest", "ingest-fsync"
            print(
                f"| {s} | {m(a, s, 'rps'):.0f} | {m(b, s, 'rps'):.0f} | {fx(ratio(m(b, s, 'rps'), m(a, s, 'rps')))} "
                f"| {m(a, s, 'p99'):.0f} | {m(b, s, 'p99'):.0f} | {m(a, s, 'cpu'):.1f} | {m(b, s, 'cpu'):.1f} "
                f"| {m(b, s, 'rpf'):.1f} |"
            )

    # The goals of this issue.
    def goal(name, value, limit, at_most, extra=""):
        if value is None:
            print(f"- {name}: not measured")
            return
        ok = value <= limit if at_most else value >= limit
        by = (value / limit - 1) * 100
        verdict = "met" if ok else "NOT met"
        print(f"- {name}: {value:.2f}x (goal {'<=' if at_most else '>='} {limit}x): {verdict}, {by:+.0f}% against the limit{extra}")

    print("\nGoal checks (ratios of medians):")
    goal("request path CPU/req at 8 KiB vs nginx's CPU/req", ratio(m("ingest", "wrk-8k", "worker"), m("nginx", "wrk-8k", "cpu")), 1.0, True,
         rounds_ratio("ingest", "nginx", "wrk-8k", "worker", "cpu"))
    goal("request path CPU/req at 64 KiB vs nginx's CPU/req", ratio(m("ingest", "wrk-64k", "worker"), m("nginx", "wrk-64k", "cpu")), 1.2, True,
         rounds_ratio("ingest", "nginx", "wrk-64k", "worker", "cpu"))
    goal("whole node req/s at 8 KiB vs nginx", ratio(m("ingest", "wrk-8k", "rps"), m("nginx", "wrk-8k", "rps")), 0.9, False,
         rounds_ratio("ingest", "nginx", "wrk-8k", "rps"))
    goal("whole node MB/s at 64 KiB vs nginx", ratio(m("ingest", "wrk-64k", "mbs"), m("nginx", "wrk-64k", "mbs")), 0.7, False,
         rounds_ratio("ingest", "nginx", "wrk-64k", "mbs"))
    goal("fsync req/s at 8 KiB vs os", ratio(m("ingest-fsync", "wrk-8k", "rps"), m("ingest", "wrk-8k", "rps")), 0.5, False,
         rounds_ratio("ingest-fsync", "ingest", "wrk-8k", "rps")
         + (f"; {m('ingest-fsync', 'wrk-8k', 'rpf'):.1f} records per flush" if ("ingest-fsync", "wrk-8k") in runs else ""))

    with open(path + ".ingest-mix-rps", "w") as f:
        rps = m("ingest", "mix", "rps")
        f.write(f"{rps:.0f}\n" if rps else "0\n")
