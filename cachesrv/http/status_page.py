"""``GET /-/``: the status page, HTML rendered here from the ``/-/stats`` dict.

No front-end build and no script: one HTML document with its CSS inline and the
charts as inline SVG, laid out to read on a laptop and on a phone (tiles wrap,
wide tables scroll sideways). ``?refresh=N`` reloads it every N seconds.

:func:`recorder` is the request observer's sink that feeds the page's recent
uploads and restores.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable, Sequence
from typing import Any

from cachesrv.http.accesslog import Exchange
from cachesrv.http.metrics import is_restore
from cachesrv.repository import Repository

# -- recording -----------------------------------------------------------------------


def recorder(repo: Repository) -> Callable[[Exchange], None]:
    """A sink that keeps finished uploads and restores in ``repo.activity``."""

    def record(exchange: Exchange) -> None:
        seconds = max(exchange.seconds, 1e-6)
        upload = exchange.upload
        if upload is not None and exchange.status in (200, 201):
            repo.activity.add_upload(
                {
                    "time": round(exchange.started, 3),
                    "name": exchange.name,
                    "size": upload.logical_bytes,
                    "new_bytes": upload.new_bytes,
                    "stored_bytes": upload.stored_bytes,
                    "dedup_fraction": exchange.dedup_fraction,
                    "seconds": round(exchange.seconds, 4),
                    "mb_per_s": round(upload.logical_bytes / seconds / 1e6, 2),
                }
            )
        elif is_restore(exchange):
            repo.activity.add_restore(
                {
                    "time": round(exchange.started, 3),
                    "name": exchange.name,
                    "bytes": exchange.bytes_out,
                    "status": exchange.status,
                    "match": exchange.match,
                    "complete": exchange.error is None,
                    "seconds": round(exchange.seconds, 4),
                    "mb_per_s": round(exchange.bytes_out / seconds / 1e6, 2),
                }
            )

    return record


# -- formatting ------------------------------------------------------------------------


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def size(n: float | int | None) -> str:
    if n is None:
        return "—"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def ago(when: float | None, now: float) -> str:
    if not when:
        return "—"
    seconds = max(0.0, now - when)
    for limit, unit, div in ((90, "s", 1), (5400, "min", 60), (129600, "h", 3600)):
        if seconds < limit:
            return f"{seconds / div:.0f} {unit} ago"
    return f"{seconds / 86400:.0f} d ago"


def _stamp(when: float | None) -> str:
    if not when:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(when))


def _when(when: float | None, now: float) -> str:
    return f'<time title="{_stamp(when)}">{ago(when, now)}</time>'


def _pct(fraction: float | None) -> str:
    return "—" if fraction is None else f"{fraction:.1%}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min"


# -- charts ----------------------------------------------------------------------------

_W, _H, _PAD = 600, 160, 4


def _line_chart(
    label: str, times: Sequence[float], series: Sequence[tuple[str, str, Sequence[float]]]
) -> str:
    """Lines of values over time, scaled to the largest; series: (name, css class, values)."""
    if len(times) < 2:
        return '<p class="empty">Not enough history yet (one point a minute).</p>'
    top = max((max(v) for _, _, v in series if v), default=0) or 1
    t0, t1 = times[0], times[-1]
    span = (t1 - t0) or 1

    def xy(t: float, v: float) -> str:
        x = _PAD + (t - t0) / span * (_W - 2 * _PAD)
        y = _H - _PAD - v / top * (_H - 2 * _PAD)
        return f"{x:.1f},{y:.1f}"

    lines = "".join(
        f'<polyline class="{css}" points="{" ".join(map(xy, times, values))}">'
        f"<title>{_e(name)}</title></polyline>"
        for name, css, values in series
    )
    grid = "".join(
        f'<line class="grid" x1="0" x2="{_W}" y1="{_H * f:.0f}" y2="{_H * f:.0f}"/>'
        for f in (0.25, 0.5, 0.75)
    )
    legend = " ".join(f'<span class="key {css}"></span>{_e(name)}' for name, css, _ in series)
    return (
        f'<svg viewBox="0 0 {_W} {_H}" preserveAspectRatio="none" role="img" '
        f'aria-label="{_e(label)}">{grid}{lines}</svg>'
        f'<div class="axis"><span>{_stamp(t0)}</span><span>max {size(top)}</span>'
        f"<span>{_stamp(t1)}</span></div><p class=legend>{legend}</p>"
    )


def _bar_chart(label: str, points: Sequence[tuple[float, float | None, str]]) -> str:
    """Bars of fractions (0..1); None draws nothing (no reads in that interval)."""
    if not points or all(v is None for _, v, _ in points):
        return '<p class="empty">No reads yet.</p>'
    width = (_W - 2 * _PAD) / len(points)
    bars = "".join(
        f'<rect x="{_PAD + i * width:.1f}" y="{_H - _PAD - v * (_H - 2 * _PAD):.1f}" '
        f'width="{max(width - 1, 1):.1f}" height="{v * (_H - 2 * _PAD):.1f}">'
        f"<title>{_e(title)}</title></rect>"
        for i, (_, v, title) in enumerate(points)
        if v is not None
    )
    grid = "".join(
        f'<line class="grid" x1="0" x2="{_W}" y1="{_H * f:.0f}" y2="{_H * f:.0f}"/>'
        for f in (0.25, 0.5, 0.75)
    )
    return (
        f'<svg class="bars" viewBox="0 0 {_W} {_H}" preserveAspectRatio="none" role="img" '
        f'aria-label="{_e(label)}">{grid}{bars}</svg>'
        f'<div class="axis"><span>{_stamp(points[0][0])}</span><span>100% at the top</span>'
        f"<span>{_stamp(points[-1][0])}</span></div>"
    )


# -- the page --------------------------------------------------------------------------

_CSS = """
:root{--bg:#f6f7f9;--card:#fff;--ink:#1d2330;--mute:#667085;--line:#e4e7ec;--accent:#2563eb;
--good:#16a34a;--warn:#d97706;--bad:#dc2626;--soft:#dbeafe}
@media (prefers-color-scheme:dark){:root{--bg:#0f1420;--card:#171d2b;--ink:#e6e9ef;
--mute:#98a2b3;--line:#2a3244;--soft:#1e3a8a}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);
font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
header{display:flex;flex-wrap:wrap;gap:.5rem 1.5rem;align-items:baseline;
padding:1rem 1.25rem;background:var(--card);border-bottom:1px solid var(--line)}
header h1{margin:0;font-size:1.35rem}header .mute{font-size:.9rem}
header nav{margin-left:auto;font-size:.9rem}
main{max-width:1200px;margin:0 auto;padding:1rem}
a{color:var(--accent)}
.mute{color:var(--mute)}
.grid2{display:grid;grid-template-columns:repeat(auto-fit,minmax(320px,1fr));gap:1rem}
.tiles{display:grid;grid-template-columns:repeat(auto-fit,minmax(190px,1fr));gap:.75rem;
margin:1rem 0}
.tile,.card{background:var(--card);border:1px solid var(--line);border-radius:10px}
.tile{padding:.7rem .9rem}
.tile b{display:block;font-size:1.35rem;font-variant-numeric:tabular-nums}
.tile span{color:var(--mute);font-size:.85rem}
.card{padding:1rem 1.1rem;margin-bottom:1rem;min-width:0}
.card h2{margin:0 0 .6rem;font-size:1.05rem}
.card h2 small{font-weight:normal;color:var(--mute);font-size:.85rem}
.meter{position:relative;height:22px;border-radius:6px;background:var(--line);overflow:hidden;
margin:.4rem 0}
.meter i{position:absolute;inset:0 auto 0 0;background:var(--accent)}
.meter i.warn{background:var(--warn)}.meter i.bad{background:var(--bad)}
.meter u{position:absolute;top:0;bottom:0;width:2px;background:var(--ink);opacity:.6}
.legend-row{display:flex;flex-wrap:wrap;gap:.25rem 1.25rem;font-size:.88rem;color:var(--mute)}
.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%;font-size:.9rem}
th,td{padding:.35rem .5rem;border-bottom:1px solid var(--line);text-align:right;
white-space:nowrap;font-variant-numeric:tabular-nums}
th{color:var(--mute);font-weight:600;font-size:.8rem;text-transform:uppercase;letter-spacing:.02em}
th:first-child,td:first-child{text-align:left}
td.name{max-width:28rem;overflow:hidden;text-overflow:ellipsis}
.grid2 td.name{max-width:13rem}
.tag{display:inline-block;padding:0 .4rem;border-radius:4px;font-size:.75rem;
background:var(--soft);color:var(--ink);margin-right:.35rem}
.bar{display:inline-block;height:.55rem;border-radius:3px;background:var(--accent);
vertical-align:middle;margin-left:.35rem;opacity:.75}
svg{width:100%;height:160px;display:block;background:var(--bg);border-radius:6px}
svg polyline{fill:none;stroke-width:2;vector-effect:non-scaling-stroke}
svg .logical{stroke:var(--mute);stroke-dasharray:4 3}svg .stored{stroke:var(--accent)}
svg .disk{stroke:var(--warn)}
svg line.grid{stroke:var(--line);stroke-width:1;vector-effect:non-scaling-stroke}
svg.bars rect{fill:var(--good)}
.axis{display:flex;justify-content:space-between;font-size:.75rem;color:var(--mute);
margin-top:.2rem}
.legend{font-size:.85rem;color:var(--mute);margin:.3rem 0 0}
.key{display:inline-block;width:.9rem;height:3px;vertical-align:middle;margin:0 .3rem 0 .6rem}
.key.logical{background:var(--mute)}.key.stored{background:var(--accent)}
.key.disk{background:var(--warn)}
.empty{color:var(--mute);font-style:italic}
.bad{color:var(--bad)}.ok{color:var(--good)}
dl{display:grid;grid-template-columns:auto 1fr;gap:.2rem 1rem;margin:0;font-size:.9rem}
dt{color:var(--mute)}dd{margin:0;font-variant-numeric:tabular-nums}
@media (max-width:560px){main{padding:.6rem}.tile b{font-size:1.15rem}
header nav{margin-left:0}}
"""


def _tile(value: str, label: str, css: str = "") -> str:
    cls = f' class="{css}"' if css else ""
    return f'<div class="tile"><b{cls}>{value}</b><span>{_e(label)}</span></div>'


def _table(headers: Sequence[str], rows: Sequence[str], empty: str) -> str:
    if not rows:
        return f'<p class="empty">{_e(empty)}</p>'
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    return (
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>'
        + "".join(rows)
        + "</tbody></table></div>"
    )


def _capacity(stats: dict[str, Any]) -> str:
    life = stats["lifecycle"]
    used = stats["disk_bytes"]
    max_size, hard = life.get("max_size"), life.get("hard_limit")
    scale = max(hard or 0, max_size or 0, used, 1)
    fill = used / scale
    css = "bad" if hard and used >= hard else "warn" if max_size and used > max_size else ""
    marks = "".join(
        f'<u style="left:{limit / scale * 100:.2f}%" title="{_e(name)} {size(limit)}"></u>'
        for name, limit in (("max-size", max_size), ("hard limit", hard))
        if limit
    )
    limits = (f"--max-size {size(max_size)} (evicts past it)" if max_size else "no --max-size") + (
        f" · hard limit {size(hard)} (507 past it)" if hard else " · no hard limit"
    )
    return (
        '<section class="card"><h2>Store size</h2>'
        f'<div class="meter"><i class="{css}" style="width:{fill * 100:.2f}%"></i>{marks}</div>'
        f'<div class="legend-row"><span><b>{size(used)}</b> on disk '
        f"(packs {size(life.get('pack_bytes'))} + hot cache {size(stats['hot_bytes'])})</span>"
        f"<span>{_e(limits)}</span></div></section>"
    )


def _caches(stats: dict[str, Any], now: float) -> str:
    caches = stats.get("caches") or {"names": [], "count": 0, "marked_at": None}
    names = caches["names"]
    biggest = max((row["size"] for row in names), default=0) or 1
    rows = []
    for row in names:
        kind = "key" if row["namespace"] == "entry" else "path"
        unique, shared = row["unique_bytes"], row["shared_bytes"]
        rows.append(
            f'<tr><td class="name" title="{_e(row["name"])}"><span class="tag">{kind}</span>'
            f"{_e(row['name'])}</td>"
            f'<td>{size(row["size"])}<span class="bar" '
            f'style="width:{row["size"] / biggest * 4:.2f}rem"></span></td>'
            f"<td>{size(unique)}</td><td>{size(shared)}</td><td>{row['hits']}</td>"
            f"<td>{_when(row['last_access'], now)}</td>"
            f"<td>{_when(row['last_write'], now)}</td></tr>"
        )
    marked = caches.get("marked_at")
    note = (
        f"unique and shared stored bytes from the GC mark of {ago(marked, now)}"
        if marked
        else "unique and shared bytes appear after the first garbage collection"
    )
    shown = f"{len(names)} of {caches['count']}" if caches["count"] > len(names) else ""
    table = _table(
        ["cache", "size", "unique", "shared", "hits", "last access", "last write"],
        rows,
        "The store is empty.",
    )
    return (
        f'<section class="card"><h2>Caches <small>{_e(shown)} by size · {_e(note)}</small></h2>'
        f"{table}</section>"
    )


def _uploads(stats: dict[str, Any], now: float) -> str:
    rows = [
        f'<tr><td class="name" title="{_e(u["name"])}">{_e(u["name"])}</td>'
        f"<td>{size(u['size'])}</td><td>{size(u['new_bytes'])}</td>"
        f"<td>{_pct(u['dedup_fraction'])}</td>"
        f'<td title="{_duration(u["seconds"])}">{u["mb_per_s"]:.1f} MB/s</td>'
        f"<td>{_when(u['time'], now)}</td></tr>"
        for u in stats.get("recent_uploads", [])
    ]
    table = _table(["name", "size", "new", "dedup", "rate", "when"], rows, "No uploads yet.")
    return f'<section class="card"><h2>Recent uploads</h2>{table}</section>'


def _restores(stats: dict[str, Any], now: float) -> str:
    rows = []
    for r in stats.get("recent_restores", []):
        match = f'<span class="tag">{_e(r["match"])}</span>' if r.get("match") else ""
        failed = "" if r.get("complete", True) else ' <span class="bad">aborted</span>'
        rows.append(
            f'<tr><td class="name" title="{_e(r["name"])}">{match}{_e(r["name"])}{failed}</td>'
            f"<td>{size(r['bytes'])}</td><td>{_duration(r['seconds'])}</td>"
            f"<td>{r['mb_per_s']:.1f} MB/s</td><td>{_when(r['time'], now)}</td></tr>"
        )
    table = _table(["name", "bytes", "took", "throughput", "when"], rows, "No restores yet.")
    return f'<section class="card"><h2>Recent restores</h2>{table}</section>'


def _gc_run(title: str, report: dict[str, Any] | None, now: float, empty: str) -> str:
    if not report:
        return (
            f'<section class="card"><h2>{_e(title)}</h2><p class="empty">{_e(empty)}</p></section>'
        )
    items = [
        ("when", _when(report.get("started"), now)),
        ("took", _duration(report.get("seconds"))),
        ("expired (TTL)", str(report.get("expired_names", 0))),
        (
            "evicted",
            f"{report.get('evicted_names', 0)} ({size(report.get('evicted_claimed_bytes'))})",
        ),
        ("swept chunks", f"{report.get('swept_chunks', 0)} ({size(report.get('swept_bytes'))})"),
        ("packs compacted", str(report.get("compacted_packs", 0))),
        ("reclaimed", size(report.get("reclaimed_bytes"))),
        ("packs after", size(report.get("pack_bytes"))),
    ]
    evicted = report.get("evicted") or []
    if evicted:
        names = ", ".join(str(e.get("name")) for e in evicted[:8])
        more = f" and {len(evicted) - 8} more" if len(evicted) > 8 else ""
        items.append(("names", _e(names + more)))
    body = "".join(f"<dt>{_e(k)}</dt><dd>{v}</dd>" for k, v in items)
    return f'<section class="card"><h2>{_e(title)}</h2><dl>{body}</dl></section>'


def _charts(stats: dict[str, Any]) -> str:
    points = stats.get("history") or []
    times = [p["at"] for p in points]
    growth = _line_chart(
        "store growth",
        times,
        [
            ("logical (as clients see it)", "logical", [p["logical_bytes"] for p in points]),
            ("on disk", "disk", [p["disk_bytes"] for p in points]),
            ("stored (compressed unique chunks)", "stored", [p["stored_bytes"] for p in points]),
        ],
    )
    rates: list[tuple[float, float | None, str]] = []
    for p in points:
        reads = p["hits"] + p["not_found"]
        rate = p["hits"] / reads if reads else None
        rates.append((p["at"], rate, f"{_stamp(p['at'])}: {p['hits']} hits of {reads} reads"))
    return (
        '<div class="grid2">'
        f'<section class="card"><h2>Store growth</h2>{growth}</section>'
        f'<section class="card"><h2>Hit rate <small>reads that found a cache</small></h2>'
        f"{_bar_chart('hit rate', rates)}</section></div>"
    )


def render(stats: dict[str, Any], refresh: str | None = None) -> str:
    """The page for a ``/-/stats`` dict; ``refresh``: seconds between reloads."""
    now = time.time()
    since = stats["since_start"]
    life = stats["lifecycle"]
    seconds = None
    if refresh:
        try:
            seconds = max(2, min(3600, int(refresh)))
        except ValueError:
            seconds = None
    meta = f'<meta http-equiv="refresh" content="{seconds}">' if seconds else ""
    nav = " · ".join(
        f"<b>{label}</b>" if value == seconds else f'<a href="?refresh={value}">{label}</a>'
        for label, value in (("10 s", 10), ("1 min", 60))
    )
    nav = ("<b>off</b>" if not seconds else '<a href="/-/">off</a>') + " · " + nav
    dedup, compression = stats.get("dedup_ratio"), stats.get("compression_ratio")
    corrupt = since.get("corrupt_chunks", 0)
    quarantined = life.get("quarantined_chunks", 0)
    tiles = "".join(
        [
            _tile(size(stats["logical_bytes"]), "logical bytes (what clients stored)"),
            _tile(size(stats["stored_bytes"]), "stored bytes (unique, compressed)"),
            _tile(f"{dedup:.2f}×" if dedup else "—", "dedup ratio (logical / unique)"),
            _tile(f"{compression:.2f}×" if compression else "—", "compression ratio (zstd)"),
            _tile(size(stats["hot_bytes"]), "hot cache (decoded, for restores)"),
            _tile(f"{stats['objects']} · {stats['cache_entries']}", "objects · keyed entries"),
            _tile(f"{stats['chunks']:,}", f"chunks ({size(stats['chunk_raw_bytes'])} raw)"),
            _tile(_pct(since.get("hit_rate")), f"hit rate ({since.get('hits', 0)} hits)"),
            _tile(
                _pct(since.get("upload_dedup_fraction")),
                f"upload dedup ({since.get('uploads', 0)} uploads)",
            ),
            _tile(
                str(corrupt),
                f"corrupt chunks met ({quarantined} quarantined)",
                "bad" if corrupt or quarantined else "ok",
            ),
        ]
    )
    uptime = ago(since.get("started"), now).replace(" ago", "")
    gc_note = (
        f"{life.get('gc_runs', 0)} runs since start, {_duration(life.get('gc_seconds'))} in all"
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">{meta}
<title>cachesrv status</title><link rel="icon" href="data:,"><style>{_CSS}</style></head>
<body><header><h1>cachesrv</h1>
<span class="mute">version {_e(stats.get("version", ""))} · up {_e(uptime)} ·
numbers since start reset on restart · <a href="/-/stats">JSON</a> ·
<a href="/-/metrics">metrics</a></span>
<nav class="mute">auto-refresh: {nav}</nav></header>
<main>
{_capacity(stats)}
<div class="tiles">{tiles}</div>
{_charts(stats)}
{_caches(stats, now)}
<div class="grid2">{_uploads(stats, now)}{_restores(stats, now)}</div>
<div class="grid2">
{
        _gc_run(
            f"Last garbage collection ({gc_note})",
            life.get("last_gc"),
            now,
            "No collection has run since the server started.",
        )
    }
{
        _gc_run(
            f"Last eviction ({life.get('evicted_names', 0)} names since start)",
            life.get("last_eviction"),
            now,
            "Nothing evicted since the server started.",
        )
    }
</div>
</main></body></html>
"""
