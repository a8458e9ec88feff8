#!/usr/bin/env python3
"""Soak report: slopes per hour of RSS, fds and threads, per process, from samples.csv, and
chart.svg (hand-written SVG: no plotting library needed). Usage: report.py RUN_DIR"""
import csv
import json
import sys
from collections import defaultdict
from pathlib import Path

run = Path(sys.argv[1])
series = defaultdict(list)  # (name, pid) -> [(t, rss_kb, fds, threads)]
with open(run / "samples.csv") as f:
    for row in csv.DictReader(f):
        try:
            series[(row["process"], row["pid"])].append(
                (int(row["t_s"]), int(row["rss_kb"]), int(row["fds"]), int(row["threads"])))
        except (ValueError, KeyError):
            continue
t_max = max((p[0] for s in series.values() for p in s), default=0)


def slope_per_hour(points):
    """Least-squares slope of (t, v), per hour."""
    n = len(points)
    if n < 3:
        return None
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    den = sum((t - mt) ** 2 for t, _ in points)
    if den == 0:
        return None
    return sum((t - mt) * (v - mv) for t, v in points) / den * 3600


print(f"# Soak report ({run.name})\n")
summary = {}
try:
    summary = json.loads((run / "summary.json").read_text() or "{}")
except (OSError, ValueError):
    pass
if summary:
    print(f"requests {summary.get('requests')}, failed {summary.get('errors')}, "
          f"{summary.get('rps')} req/s, p99 {summary.get('p99_ms')} ms, "
          f"mTLS {summary.get('mtls_percent')} %\n")
    for e in summary.get("first_errors", [])[:5]:
        print(f"- first error: {e}")
events = (run / "events.log").read_text() if (run / "events.log").exists() else ""
print(f"\nsidecar restarts: {events.count('restarted ')}\n")


def kv(line):
    return dict(w.split("=", 1) for w in line.split() if "=" in w)


def failures_vs_restarts():
    """The demo's failed requests per phase (its phases end at each config change, 5-10 s apart)
    set against the restarts in events.log. The two clocks are aligned through the split edits:
    the script logs when it saved user-split.yaml, the demo when it applied it (a 200 ms poll)."""
    restarts = []
    saves = []
    for line in events.splitlines():
        f = kv(line)
        if " restarted " in line and "sigterm_epoch" in f:
            restarts.append((line.split()[2], float(f["sigterm_epoch"]), float(f["exited_epoch"]),
                             float(f["started_epoch"])))
        elif " split " in line and "saved_epoch" in f:
            saves.append(float(f["saved_epoch"]))
    applied = [e["at_s"] for e in summary.get("config_events", []) if "user-split.yaml" in e.get("files", [])]
    phases = summary.get("phases", [])
    if not restarts or not saves or not applied or not phases:
        return
    # The demo's t = 0 in epoch seconds: the offset most save/apply pairs agree on (within
    # 0.5 s; an edit the demo folded into another or missed does not shift the rest).
    bins = defaultdict(list)
    for s in saves:
        for a in applied:
            bins[round((s - a) * 2)].append(s - a)
    best = max(bins.values(), key=len)
    zero = sorted(best)[len(best) // 2]
    rows = []
    claimed = set()
    for pod, kill, exited, started in restarts:
        t0, t1 = kill - zero, started - zero + 3
        hit = [i for i, p in enumerate(phases) if p["to_s"] > t0 - 1 and p["from_s"] < t1 and i not in claimed]
        claimed.update(hit)
        rows.append((pod, t0, exited - kill, started - exited, sum(phases[i]["errors"] for i in hit)))
    other = [(p["from_s"], p["to_s"], p["errors"]) for i, p in enumerate(phases) if p["errors"] and i not in claimed]
    total = sum(p["errors"] for p in phases)
    print("failed requests against restarts (the demo's phases, between config changes 5-10 s apart, "
          "that overlap SIGTERM - 1 s … restart + 3 s):\n")
    with open(run / "restarts.csv", "w") as f:
        f.write("pod,sigterm_s,drain_to_exit_s,exit_to_restart_s,failed\n")
        for r in rows:
            f.write(f"{r[0]},{r[1]:.1f},{r[2]:.2f},{r[3]:.3f},{r[4]}\n")
    med = lambda v: sorted(v)[len(v) // 2]
    print("| pod | restarts | failed | per restart: median (min–max) | SIGTERM→exit median (max) s | exit→restart max s |")
    print("|---|---|---|---|---|---|")
    for pod in sorted({r[0] for r in rows}):
        mine = [r for r in rows if r[0] == pod]
        f = [r[4] for r in mine]
        print(f"| {pod} | {len(mine)} | {sum(f)} | {med(f)} ({min(f)}–{max(f)}) | "
              f"{med([r[2] for r in mine]):.2f} ({max(r[2] for r in mine):.2f}) | {max(r[3] for r in mine):.3f} |")
    print(f"\nall restarts: {sum(r[4] for r in rows)} failed of {total}; one row per restart in restarts.csv")
    print(f"failed requests away from any restart: {sum(e for _, _, e in other)}"
          + "".join(f"\n- {a:.1f}–{b:.1f} s: {e}" for a, b, e in other[:20]))
    print()


failures_vs_restarts()
fmt = lambda v: "—" if v is None else f"{v:+.2f}"
print("Processes that lived through at least half the run (per process):\n")
print("| process | pid | samples | covers | RSS start→end (MB) | RSS MB/h | fds start→end | fds/h | threads start→end | threads/h |")
print("|---|---|---|---|---|---|---|---|---|---|")
short = defaultdict(list)  # name -> [(first t, last point)]
for (name, pid), pts in sorted(series.items()):
    pts.sort()
    span = pts[-1][0] - pts[0][0]
    if span < t_max / 2:
        short[name].append((pts[0][0], pts[-1]))
        continue
    rss = slope_per_hour([(t, r / 1024) for t, r, _, _ in pts])
    fds = slope_per_hour([(t, f) for t, _, f, _ in pts])
    thr = slope_per_hour([(t, h) for t, _, _, h in pts])
    print(f"| {name} | {pid} | {len(pts)} | {span} s | {pts[0][1]/1024:.1f}→{pts[-1][1]/1024:.1f} | {fmt(rss)} "
          f"| {pts[0][2]}→{pts[-1][2]} | {fmt(fds)} | {pts[0][3]}→{pts[-1][3]} | {fmt(thr)} |")
if short:
    # A sidecar restarted every few minutes never grows for long; what can still grow is what
    # each new one starts with (config from pilot, certificates): its last sample, per
    # generation, against time.
    print("\nRestarted sidecars, per generation (each one's last sample; the slope is across generations):\n")
    print("| pod | generations | RSS first→last gen (MB) | RSS MB/h | fds first→last gen | fds/h | threads max |")
    print("|---|---|---|---|---|---|---|")
    for name, gens in sorted(short.items()):
        gens.sort()
        rss = slope_per_hour([(t, p[1] / 1024) for t, p in gens])
        fds = slope_per_hour([(t, p[2]) for t, p in gens])
        print(f"| {name} | {len(gens)} | {gens[0][1][1]/1024:.1f}→{gens[-1][1][1]/1024:.1f} | {fmt(rss)} "
              f"| {gens[0][1][2]}→{gens[-1][1][2]} | {fmt(fds)} | {max(p[3] for _, p in gens)} |")

# chart.svg: three panels (RSS MB, fds, threads) against time.
W, H, PAD = 900, 220, 50
colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
          "#7f7f7f", "#bcbd22", "#17becf"]
panels = [("RSS (MB)", lambda p: p[1] / 1024), ("open fds", lambda p: p[2]), ("threads", lambda p: p[3])]
out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H * 3 + 60}" font-family="sans-serif" font-size="11">',
       f'<rect width="100%" height="100%" fill="white"/>',
       f'<text x="{PAD}" y="16" font-size="13">Soak {run.name}: mastd and sidecars, sampled every 10 s ({t_max} s)</text>']
names = sorted(series)
kinds = sorted({k[0] for k in names})
colour = {k: colors[j % len(colors)] for j, k in enumerate(kinds)}
for i, (title, get) in enumerate(panels):
    top = 30 + i * H
    vmax = max((get(p) for s in series.values() for p in s), default=1) * 1.1 or 1
    out.append(f'<text x="{PAD}" y="{top + 12}">{title} (max {vmax / 1.1:.1f})</text>')
    out.append(f'<rect x="{PAD}" y="{top + 18}" width="{W - 2 * PAD}" height="{H - 40}" fill="none" stroke="#999"/>')
    for j, key in enumerate(names):
        pts = sorted(series[key])
        if not pts:
            continue
        xy = " ".join(
            f"{PAD + (t / (t_max or 1)) * (W - 2 * PAD):.1f},{top + 18 + (H - 40) * (1 - get(p) / vmax):.1f}"
            for p in pts for t in [p[0]])
        out.append(f'<polyline fill="none" stroke="{colour[key[0]]}" stroke-width="1.2" points="{xy}">'
                   f'<title>{key[0]} ({key[1]})</title></polyline>')
legend_y = 30 + 3 * H
for j, kind in enumerate(kinds[:10]):
    n = sum(1 for k in names if k[0] == kind)
    label = kind if n == 1 else f"{kind} ({n} processes)"
    out.append(f'<text x="{PAD + (j % 4) * 200}" y="{legend_y + (j // 4) * 12}" fill="{colour[kind]}">{label}</text>')
out.append("</svg>")
(run / "chart.svg").write_text("\n".join(out))
print(f"\nchart: {run / 'chart.svg'}")
