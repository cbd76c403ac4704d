#!/usr/bin/env python3
"""net_chart.py: draws scripts/bench-net's results as one SVG, with the standard library only.

  net_chart.py NET_BENCH_JSON OUT_SVG

Top row: throughput; bottom row: the server's CPU time per message or request. Left: echo,
grouped by connection count; right: HTTP (http_server against nginx) and key-value (kv_server
against redis-server). One bar per skein server and I/O backend and one for the anchor. Bars are
the medians; the runs behind each median are drawn as small ticks so the spread shows.
"""

import json
import math
import sys
from xml.sax.saxutils import escape

# Bars by role: skein's servers per backend, and each comparison's anchor.
COLORS = {"epoll": "#2b6cb0", "io_uring": "#805ad5", "io_uring_poll": "#b794f4", "nopoll-epoll": "#90cdf4",
          "nopoll-io_uring": "#d6bcfa", "nopoll-io_uring_poll": "#e9d8fd", "b-epoll": "#2c7a7b",
          "b-io_uring": "#81e6d9", "b-io_uring_poll": "#b2f5ea", "anchor": "#dd6b20", "threads": "#718096"}
LABELS = {"epoll": "skein, SKEIN_IO=epoll", "io_uring": "skein, SKEIN_IO=io_uring (completion)",
          "io_uring_poll": "skein, io_uring readiness mode",
          "nopoll-epoll": "kv_server --poll-us 0, epoll", "nopoll-io_uring": "kv_server --poll-us 0, io_uring",
          "nopoll-io_uring_poll": "kv_server --poll-us 0, io_uring readiness",
          "b-epoll": "skein (B), epoll", "b-io_uring": "skein (B), io_uring",
          "b-io_uring_poll": "skein (B), io_uring readiness",
          "anchor": "anchor: echo_epoll / nginx / redis-server", "threads": "thread per connection (echo_threads)"}
ANCHORS = ("echo_epoll", "nginx", "redis-server")


def role(server):
    """The bar role of a server id of scripts/bench-net."""
    if server in ANCHORS:
        return "anchor"
    if server == "echo_threads":
        return "threads"
    base, _, backend = server.rpartition("-")
    if base.endswith("-nopoll"):
        return "nopoll-" + backend
    if base == "skein_b":
        return "b-" + backend
    return backend


def nice_max(v):
    """A round axis maximum at or above v, and its tick step."""
    if v <= 0:
        return 1.0, 0.2
    exp = 10 ** math.floor(math.log10(v))
    for m in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if m * exp >= v:
            top = m * exp
            break
    step = top / 5
    return top, step


def human(v):
    if v >= 1e6:
        return f"{v / 1e6:.2f}M"
    if v >= 1e3:
        return f"{v / 1e3:.0f}k"
    return f"{v:.0f}"


class Svg:
    def __init__(self, width, height):
        self.width, self.height, self.parts = width, height, []

    def add(self, s):
        self.parts.append(s)

    def text(self, x, y, s, size=12, anchor="start", weight="normal", fill="#1a202c", rotate=None):
        tr = f' transform="rotate({rotate} {x:.1f} {y:.1f})"' if rotate is not None else ""
        self.add(f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
                 f'font-weight="{weight}" fill="{fill}"{tr}>{escape(s)}</text>')

    def rect(self, x, y, w, h, fill, title=None):
        t = f"<title>{escape(title)}</title>" if title else ""
        self.add(f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" fill="{fill}">{t}</rect>')

    def line(self, x1, y1, x2, y2, stroke="#a0aec0", width=1):
        self.add(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{stroke}" '
                 f'stroke-width="{width}"/>')

    def render(self):
        return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.width}" height="{self.height}" '
                f'viewBox="0 0 {self.width} {self.height}" font-family="Helvetica, Arial, sans-serif">\n'
                f'<rect width="100%" height="100%" fill="white"/>\n' + "\n".join(self.parts) + "\n</svg>\n")


def panel(svg, x0, y0, w, h, title, ylabel, groups, roles, medians, runs, fmt=None):
    """Grouped bars: groups is a list of (label, key); medians[key][role] and runs[key][role]."""
    fmt = fmt or human
    values = [v for k in medians for v in medians[k].values() if v] + \
             [v for k in runs for vs in runs[k].values() for v in vs]
    top, step = nice_max(max(values) if values else 1)
    left, bottom = x0 + 70, y0 + h - 40
    plot_h, plot_w = h - 80, w - 90
    svg.text(x0 + w / 2, y0 + 18, title, size=14, anchor="middle", weight="bold")
    svg.text(x0 + 16, y0 + 40 + plot_h / 2, ylabel, anchor="middle", rotate=-90)
    tick = 0.0
    while tick <= top + 1e-9:
        y = bottom - plot_h * tick / top
        svg.line(left, y, left + plot_w, y, stroke="#edf2f7")
        svg.text(left - 6, y + 4, fmt(tick), size=11, anchor="end")
        tick += step
    svg.line(left, bottom, left + plot_w, bottom, stroke="#4a5568")
    svg.line(left, bottom, left, bottom - plot_h, stroke="#4a5568")
    gw = plot_w / max(1, len(groups))
    for gi, (label, key) in enumerate(groups):
        present = [r for r in roles if r in medians.get(key, {})]
        bw = gw * 0.8 / max(1, len(present))
        gx = left + gi * gw + gw * 0.1
        for si, s in enumerate(present):
            v = medians[key][s]
            x = gx + si * bw
            if v:
                bh = plot_h * v / top
                svg.rect(x + 1, bottom - bh, bw - 2, bh, COLORS[s], f"{LABELS[s]}, {label}: {fmt(v)} (median)")
                svg.text(x + bw / 2, bottom - bh - 4, fmt(v), size=9, anchor="middle")
            else:
                svg.text(x + bw / 2, bottom - 4, "n/a", size=10, anchor="middle", fill="#c53030")
            for r in runs.get(key, {}).get(s, []):
                ry = bottom - plot_h * r / top
                svg.line(x + bw * 0.3, ry, x + bw * 0.7, ry, stroke="#1a202c", width=1.5)
        svg.text(left + gi * gw + gw / 2, bottom + 18, label, size=12, anchor="middle")


def collect(data, kind, field):
    """{group: {role: median}} and {group: {role: [runs]}} of one kind's field ("rate" or "cost_us")."""
    med, runs = {}, {}
    for group, servers in data["medians"].get(kind, {}).items():
        for server, m in servers.items():
            med.setdefault(group, {})[role(server)] = m[field]
            runs.setdefault(group, {})[role(server)] = m[field + "s" if field == "rate" else "costs"]
    return med, runs


def main():
    if len(sys.argv) != 3 or sys.argv[1] in ("-h", "--help"):
        print(__doc__.strip())
        sys.exit(0 if len(sys.argv) == 2 else 2)
    data = json.load(open(sys.argv[1]))
    roles = list(COLORS)
    svg = Svg(1100, 860)
    m = data["machine"]
    svg.text(550, 24, "skein server benchmarks (scripts/bench-net), both I/O backends", size=16, anchor="middle",
             weight="bold")
    svg.text(550, 42, f"{m['date']}, {m['nproc']} CPUs ({m['cpu']}), Linux {m['kernel']}; servers on core 0, "
             f"load on core 1; bars: medians, ticks: runs", size=11, anchor="middle", fill="#4a5568")
    us = lambda v: f"{v:.2f}" if v < 10 else f"{v:.1f}"
    echo_groups = [(f"{int(n):,} connections", n) for n in sorted(data["medians"].get("echo", {}), key=int)]
    other_groups = [(label, (kind, g)) for kind, label in (("http", "HTTP, wrk -c256"), ("kv", "kv, redis-benchmark -c 50"))
                    for g in data["medians"].get(kind, {})]
    for row, (field, ylabel, fmt) in enumerate((("rate", "per second", human), ("cost_us", "server CPU, us", us))):
        y = 50 + row * 390
        med, runs = collect(data, "echo", field)
        what = "messages/s" if field == "rate" else "server CPU per message (lower is better)"
        panel(svg, 0, y, 580, 370, f"echo, 64-byte ping-pong: {what}", ylabel, echo_groups, roles, med, runs, fmt)
        med, runs = {}, {}
        for kind in ("http", "kv"):
            km, kr = collect(data, kind, field)
            for g in km:
                med[(kind, g)], runs[(kind, g)] = km[g], kr[g]
        what = "requests/s" if field == "rate" else "server CPU per request (lower is better)"
        panel(svg, 590, y, 500, 370, f"HTTP and key-value: {what}", ylabel, other_groups, roles, med, runs, fmt)
    # Legend, under the panels: only the roles that appear.
    seen = {role(s) for kind in data["medians"].values() for g in kind.values() for s in g}
    x, y = 40, 830
    for r in roles:
        if r not in seen:
            continue
        if x + 18 + 6 * len(LABELS[r]) > 1090:
            x, y = 40, y + 16
        svg.rect(x, y - 10, 12, 12, COLORS[r])
        svg.text(x + 18, y, LABELS[r], size=11)
        x += 18 + 6 * len(LABELS[r]) + 20  # about 6 px per character at 11 px
    with open(sys.argv[2], "w") as f:
        f.write(svg.render())


if __name__ == "__main__":
    main()
