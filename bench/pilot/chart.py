"""growth.csv → growth.svg: mastd's RSS and change p99 against proxies, one line per mesh size.

No plotting library: the machine's Python has none, and an SVG of two panels is a page of
code. Usage: python3 chart.py growth.csv growth.svg
"""
import csv
import sys

rows = list(csv.DictReader(open(sys.argv[1])))
sizes = sorted({int(r["services"]) for r in rows})
colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"]
W, H, M = 420, 300, 55


def panel(x0, title, key, unit):
    pts = [(int(r["proxies"]), float(r[key])) for r in rows]
    xmax = max(p for p, _ in pts)
    ymax = max(v for _, v in pts) * 1.1 or 1
    sx = lambda x: x0 + M + (W - M - 10) * x / xmax
    sy = lambda y: H - M + 10 - (H - M - 20) * y / ymax
    out = [f'<text x="{x0 + W / 2}" y="18" text-anchor="middle" font-weight="bold">{title}</text>']
    out.append(f'<line x1="{sx(0)}" y1="{sy(0)}" x2="{sx(xmax)}" y2="{sy(0)}" stroke="black"/>')
    out.append(f'<line x1="{sx(0)}" y1="{sy(0)}" x2="{sx(0)}" y2="{sy(ymax)}" stroke="black"/>')
    for i in range(5):
        y = ymax * i / 4
        out.append(f'<text x="{sx(0) - 5}" y="{sy(y) + 4}" text-anchor="end" font-size="11">{y:.0f}</text>')
        out.append(f'<line x1="{sx(0)}" y1="{sy(y)}" x2="{sx(xmax)}" y2="{sy(y)}" stroke="#ddd"/>')
    for p in sorted({p for p, _ in pts}):
        out.append(f'<text x="{sx(p)}" y="{sy(0) + 15}" text-anchor="middle" font-size="11">{p}</text>')
    out.append(f'<text x="{x0 + W / 2}" y="{H - 12}" text-anchor="middle" font-size="12">proxies</text>')
    out.append(f'<text x="{x0 + 12}" y="{H / 2}" font-size="12" transform="rotate(-90 {x0 + 12} {H / 2})" text-anchor="middle">{unit}</text>')
    for i, s in enumerate(sizes):
        line = sorted((int(r["proxies"]), float(r[key])) for r in rows if int(r["services"]) == s)
        c = colors[i % len(colors)]
        path = " ".join(f"{sx(p):.1f},{sy(v):.1f}" for p, v in line)
        out.append(f'<polyline points="{path}" fill="none" stroke="{c}" stroke-width="2"/>')
        for p, v in line:
            out.append(f'<circle cx="{sx(p):.1f}" cy="{sy(v):.1f}" r="3" fill="{c}"/>')
        out.append(f'<text x="{x0 + M + 8}" y="{40 + 14 * i}" font-size="11" fill="{c}">{s} services</text>')
    return out


svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * W}" height="{H}" font-family="sans-serif">',
       '<rect width="100%" height="100%" fill="white"/>']
svg += panel(0, "mastd RSS with proxies connected", "synced_rss_mb", "MB")
svg += panel(W, "change → all proxies, p99", "p99_ms", "ms")
svg.append("</svg>")
open(sys.argv[2], "w").write("\n".join(svg) + "\n")
