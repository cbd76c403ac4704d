#!/usr/bin/env python3
"""net_chart.py: draws scripts/bench-net's results as one SVG, with the standard library only.

  net_chart.py NET_BENCH_JSON OUT_SVG

Left: echo messages/s, grouped by connection count, one bar per server (skein, raw epoll,
thread per connection). Right: HTTP requests/s, nginx against skein's http_server. Bars are the
medians; the runs behind each median are drawn as small ticks so the spread shows.
"""

import json
import math
import sys
from xml.sax.saxutils import escape

COLORS = {"skein": "#2b6cb0", "epoll": "#dd6b20", "threads": "#718096",
          "http_server": "#2b6cb0", "nginx": "#38a169"}
LABELS = {"skein": "skein echo_server", "epoll": "raw epoll (echo_epoll)",
          "threads": "thread per connection (echo_threads)",
          "http_server": "skein http_server", "nginx": "nginx (1 worker)"}


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


def panel(svg, x0, y0, w, h, title, ylabel, groups, servers, medians, runs):
    """Grouped bars: groups is a list of (label, key); medians[key][server] and runs[key][server]."""
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
        svg.text(left - 6, y + 4, human(tick), size=11, anchor="end")
        tick += step
    svg.line(left, bottom, left + plot_w, bottom, stroke="#4a5568")
    svg.line(left, bottom, left, bottom - plot_h, stroke="#4a5568")
    gw = plot_w / max(1, len(groups))
    bw = gw * 0.8 / len(servers)
    for gi, (label, key) in enumerate(groups):
        gx = left + gi * gw + gw * 0.1
        for si, s in enumerate(servers):
            v = medians.get(key, {}).get(s)
            x = gx + si * bw
            if v:
                bh = plot_h * v / top
                svg.rect(x + 1, bottom - bh, bw - 2, bh, COLORS[s], f"{LABELS[s]}, {label}: {v:,.0f} (median)")
                svg.text(x + bw / 2, bottom - bh - 4, human(v), size=10, anchor="middle")
            else:
                svg.text(x + bw / 2, bottom - 4, "n/a", size=10, anchor="middle", fill="#c53030")
            for r in runs.get(key, {}).get(s, []):
                ry = bottom - plot_h * r / top
                svg.line(x + bw * 0.3, ry, x + bw * 0.7, ry, stroke="#1a202c", width=1.5)
        svg.text(left + gi * gw + gw / 2, bottom + 18, label, size=12, anchor="middle")


def main():
    if len(sys.argv) != 3 or sys.argv[1] in ("-h", "--help"):
        print(__doc__.strip())
        sys.exit(0 if len(sys.argv) == 2 else 2)
    data = json.load(open(sys.argv[1]))
    echo = data["echo_messages_per_s"]
    counts = sorted(echo, key=int)
    echo_runs = {n: {s: [] for s in ("skein", "epoll", "threads")} for n in counts}
    http_runs = {"all": {"nginx": [], "http_server": []}}
    for r in data["runs"]:
        if r.get("rate") is None:
            continue
        if r["kind"] == "echo" and str(r["connections"]) in echo_runs:
            echo_runs[str(r["connections"])][r["server"]].append(r["rate"])
        elif r["kind"] == "http":
            http_runs["all"][r["server"]].append(r["rate"])

    svg = Svg(1000, 470)
    m = data["machine"]
    svg.text(500, 24, "skein server benchmarks (scripts/bench-net)", size=16, anchor="middle", weight="bold")
    svg.text(500, 42, f"{m['date']}, {m['nproc']} CPUs ({m['cpu']}), Linux {m['kernel']}; servers on core 0, "
             f"load on core 1; bars: medians, ticks: runs", size=11, anchor="middle", fill="#4a5568")
    panel(svg, 0, 50, 640, 360, "echo, 64-byte ping-pong", "messages/s",
          [(f"{int(n):,} connections", n) for n in counts], ["skein", "epoll", "threads"], echo, echo_runs)
    panel(svg, 650, 50, 340, 360, "HTTP GET /, wrk -t1 -c256", "requests/s",
          [("keep-alive", "all")], ["nginx", "http_server"], {"all": data["http_requests_per_s"]}, http_runs)
    # Legend, under both panels.
    x = 70
    for s in ("skein", "epoll", "threads", "nginx"):
        label = LABELS[s] if s != "skein" else "skein (echo_server, http_server)"
        svg.rect(x, 440, 12, 12, COLORS[s])
        svg.text(x + 18, 450, label, size=11)
        x += 18 + 6 * len(label) + 24  # about 6 px per character at 11 px
    with open(sys.argv[2], "w") as f:
        f.write(svg.render())


if __name__ == "__main__":
    main()
