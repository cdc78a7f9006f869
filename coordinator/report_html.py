"""A search report as one self-contained HTML page, rendered from the JSON record of a search
(`SearchOutcome.to_json`): header, five plots as inline SVG, a table of every strategy, notes, recipe path.

No script, no stylesheet or font from elsewhere, no external URL: the page opens offline, in any browser,
and can be mailed as one file. Every string taken from the report is escaped. Missing optional keys and
degenerate searches (no strategy, no score, one site) render a "no data" line instead of a plot.

matplotlib is imported inside the plotting functions so the coordinator CLI starts fast.
"""

from __future__ import annotations

import html
import io
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protos.files import write_text_atomic

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["render_html", "write_html"]

Report = Mapping[str, Any]
NO_DATA = '<p class="nodata">no data</p>'
_TIME_KEYS = (("eval_ms", "evaluation"), ("processing_ms", "processing"),
              ("cache_saved_ms", "saved by the prefix cache"), ("est_saved_by_sampling_ms", "saved by sampling (est.)"))


# ---- tolerant readers: the JSON may come from an older or newer coordinator --------------------------------

def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else []


def _text(value: Any, default: str = "") -> str:
    return default if value is None else str(value)


def _esc(value: Any, default: str = "") -> str:
    return html.escape(_text(value, default), quote=True)


def _score(value: Any) -> str:
    v = _num(value)
    return "n/a" if v is None else f"{v:+.4f}"


def _strategies(report: Report) -> list[Mapping[str, Any]]:
    items = [_map(s) for s in _list(report.get("strategies"))]
    return sorted(items, key=lambda s: (_num(s.get("round")) or 0.0, _num(s.get("index")) or 0.0))


def _sites(report: Report) -> list[str]:
    sites = [str(s) for s in _list(report.get("sites"))]
    for extra in (*_map(report.get("per_site")), *(k for s in _strategies(report) for k in _map(s.get("sites")))):
        if str(extra) not in sites:
            sites.append(str(extra))
    return sites


def _site_totals(report: Report, site: str) -> dict[str, float | None]:
    """The per-site summary from `per_site`, each missing figure summed from the strategies' site entries."""
    given = _map(_map(report.get("per_site")).get(site))
    entries = [_map(_map(s.get("sites")).get(site)) for s in _strategies(report)]
    entries = [e for e in entries if e]
    out: dict[str, float | None] = {}
    for key in ("eval_ms", "processing_ms", "cache_saved_ms", "est_saved_by_sampling_ms", "epsilon_spent"):
        summed = [v for v in (_num(e.get(key)) for e in entries) if v is not None]
        out[key] = _num(given.get(key)) if key in given else (sum(summed) if summed else None)
    rate = _num(given.get("cache_hit_rate"))
    if rate is None:
        hits = sum(_num(e.get("cache_hits")) or 0.0 for e in entries)
        ops = sum(_num(e.get("operators_run")) or 0.0 for e in entries)
        rate = hits / ops if ops > 0 else None
    out["cache_hit_rate"] = rate
    remaining = [_num(e.get("epsilon_remaining")) for e in entries]
    out["epsilon_remaining"] = (_num(given.get("epsilon_remaining")) if "epsilon_remaining" in given
                                else next((r for r in reversed(remaining) if r is not None), None))
    return out


def _label(value: str) -> str:
    # matplotlib reads "$...$" as mathtext and hides labels that start with "_"
    return value.replace("$", r"\$").lstrip("_") or "?"


# ---- plots --------------------------------------------------------------------------------------------------

@contextmanager
def _figure(name: str, size: tuple[float, float]) -> Iterator[tuple[Axes, list[str]]]:
    """An Agg figure whose inline SVG lands in the yielded list when the block ends, its ids prefixed with
    `name` so that the several SVGs of one page never share one."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rc = {"svg.fonttype": "none", "svg.hashsalt": f"autodp-{name}", "font.size": 9.0,
          "font.family": ["DejaVu Sans", "sans-serif"], "axes.spines.top": False, "axes.spines.right": False,
          "axes.grid": True, "grid.alpha": 0.3}
    with matplotlib.rc_context(rc):
        fig = Figure(figsize=size, layout="constrained")
        FigureCanvasAgg(fig)
        out: list[str] = []
        yield fig.add_subplot(), out
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Creator": None, "Date": None, "Format": None, "Type": None})
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]  # drop the XML prolog and its DTD address
    # ids unique across the page (matplotlib numbers figure_1, axes_1... afresh in every SVG)
    out.append(svg.replace(' id="', f' id="{name}-').replace('href="#', f'href="#{name}-')
               .replace("url(#", f"url(#{name}-"))


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def _plot_scores(report: Report) -> str:
    strategies, sites = _strategies(report), _sites(report)
    points = {site: [(_num(s.get("round")), _num(_map(_map(s.get("sites")).get(site)).get("score")))
                     for s in strategies] for site in sites}
    agg = [(_num(s.get("round")), _num(s.get("aggregate_score"))) for s in strategies]
    if not any(x is not None and y is not None for pts in (*points.values(), agg) for x, y in pts):
        return NO_DATA
    from matplotlib.ticker import MaxNLocator

    with _figure("scores", (9.0, 3.8)) as (ax, out):
        width = 0.5 / max(len(sites), 1)
        for i, (site, color) in enumerate(zip(sites, _colors(len(sites)), strict=True)):
            shift = (i - (len(sites) - 1) / 2) * width
            xy = [(x + shift, y) for x, y in points[site] if x is not None and y is not None]
            if xy:
                ax.scatter([x for x, _ in xy], [y for _, y in xy], s=22, color=color, alpha=0.75, label=_label(site))
        xy = [(x, y) for x, y in agg if x is not None and y is not None]
        if xy:
            ax.scatter([x for x, _ in xy], [y for _, y in xy], s=46, marker="D", facecolor="none", edgecolor="black",
                       linewidth=1.2, label="aggregate", zorder=3)
            rounds = sorted({x for x, _ in xy})
            ax.plot(rounds, [max(y for x, y in xy if x == r) for r in rounds], color="black", linewidth=1.0,
                    label="best aggregate of the round")
        ax.axhline(0.0, color="grey", linewidth=0.8, linestyle="--")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("round")
        ax.set_ylabel("score (vs. unprocessed)")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return out[0]


def _running_best(report: Report) -> list[tuple[int, float]]:
    best: float | None = None
    steps: list[tuple[int, float]] = []
    for n, s in enumerate(_strategies(report), start=1):
        v = _num(s.get("aggregate_score"))
        if v is not None and (best is None or v > best):
            best = v
        if best is not None:
            steps.append((n, best))
    return steps


def _plot_best_so_far(report: Report, compare: Sequence[Report]) -> str:
    runs = [(f"{_text(report.get('proposer'), 'this search')} (this search)", _running_best(report))]
    for other in compare:
        name = _text(other.get("proposer"), "?")
        if any(label.startswith(name + " ") or label == name for label, _ in runs):
            name = f"{name} [{_text(other.get('search_id'), '?')}]"
        runs.append((name, _running_best(other)))
    if not any(steps for _, steps in runs):
        return NO_DATA
    from matplotlib.ticker import MaxNLocator

    with _figure("best-so-far", (9.0, 3.6)) as (ax, out):
        for (label, steps), color in zip(runs, _colors(len(runs)), strict=True):
            if steps:
                xs, ys = zip(*steps, strict=True)
                ax.step(xs, ys, where="post", color=color, linewidth=2.2 if label.endswith("(this search)") else 1.4,
                        marker="o", markersize=3, label=_label(label))
        ax.axhline(0.0, color="grey", linewidth=0.8, linestyle="--")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("strategies evaluated")
        ax.set_ylabel("best aggregate score so far")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return out[0]


def _bars(name: str, sites: list[str], series: list[tuple[str, list[float]]], ylabel: str,
          decorate: Callable[[Axes], object] | None = None) -> str:
    with _figure(name, (4.0, 3.3)) as (ax, out):
        width = 0.8 / len(series)
        hatches = ["", "", "//", "xx"]
        for i, ((label, values), color) in enumerate(zip(series, _colors(len(series)), strict=True)):
            xs = [k + (i - (len(series) - 1) / 2) * width for k in range(len(sites))]
            ax.bar(xs, values, width=width, color=color, label=_label(label), hatch=hatches[i % len(hatches)],
                   edgecolor="white" if i < 2 else "black", linewidth=0.4)
        ax.set_xticks(range(len(sites)), [_label(s) for s in sites], rotation=20 if len(sites) > 3 else 0)
        ax.set_ylabel(ylabel)
        ax.grid(axis="x", visible=False)
        if decorate is not None:
            decorate(ax)
        if len(series) > 1:
            ax.figure.legend(loc="outside upper center", ncol=2, fontsize=8, frameon=False)
    return out[0]


def _plot_time(report: Report) -> str:
    sites = _sites(report)
    totals = [_site_totals(report, s) for s in sites]
    series = [(label, [(t[key] or 0.0) / 1000.0 for t in totals]) for key, label in _TIME_KEYS]
    if not sites or not any(v > 0 for _, values in series for v in values):
        return NO_DATA
    return _bars("time", sites, series, "seconds (all tasks)")


def _plot_cache(report: Report) -> str:
    sites = _sites(report)
    rates = [_site_totals(report, s)["cache_hit_rate"] for s in sites]
    if all(r is None for r in rates):
        return NO_DATA
    return _bars("cache", sites, [("cache hit rate", [100.0 * (r or 0.0) for r in rates])], "cache hit rate (%)",
                 lambda ax: ax.set_ylim(0, 100))


def _plot_epsilon(report: Report) -> str:
    sites = _sites(report)
    spent = [_site_totals(report, s)["epsilon_spent"] for s in sites]
    if not sites or all(v is None for v in spent):
        return NO_DATA
    if all((v or 0.0) == 0.0 for v in spent):
        return '<p class="nodata">no DP: epsilon 0 at every site</p>'
    remaining = [_site_totals(report, s)["epsilon_remaining"] for s in sites]

    def annotate(ax: Axes) -> None:
        for k, (used, left) in enumerate(zip(spent, remaining, strict=True)):
            if left is not None:
                ax.annotate(f"{left:.2f} left", (k, used or 0.0), xytext=(0, 3), textcoords="offset points",
                            ha="center", fontsize=7, color="#555")
        ax.margins(y=0.15)

    return _bars("epsilon", sites, [("epsilon spent", [v or 0.0 for v in spent])], "epsilon spent", annotate)


# ---- HTML ---------------------------------------------------------------------------------------------------

_CSS = """
body{font-family:"DejaVu Sans",Helvetica,Arial,sans-serif;color:#222;margin:24px auto;max-width:1180px;padding:0 16px}
h1{font-size:22px;margin-bottom:4px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
dl.meta{display:grid;grid-template-columns:max-content auto;gap:3px 14px}dl.meta dt{font-weight:bold}
dl.meta dd{margin:0}code{font-size:12px;background:#f4f4f4;padding:1px 3px;border-radius:3px;word-break:break-word}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(360px,1fr));gap:14px}
figure{margin:12px 0;border:1px solid #e3e3e3;border-radius:6px;padding:8px;background:#fff}
figure svg{width:100%;height:auto;display:block}figcaption{font-size:13px;color:#444;margin-top:6px}
p.nodata{color:#888;font-style:italic;padding:24px;text-align:center}
table{border-collapse:collapse;font-size:12px;width:100%}th,td{border:1px solid #ddd;padding:3px 6px;vertical-align:top}
th{background:#f0f0f0;position:sticky;top:0}td.num{text-align:right;white-space:nowrap}
tr.best{background:#eef8ee}.fail{color:#b00020}.muted{color:#888}
"""


def _figure_html(fig_id: str, body: str, caption: str) -> str:
    return f'<figure id="{fig_id}">{body}<figcaption>{caption}</figcaption></figure>'


def _header(report: Report) -> str:
    best = _map(report.get("best"))
    rows = [("search", f"<code>{_esc(report.get('search_id'), '?')}</code>"),
            ("proposer", _esc(report.get("proposer"), "unknown")),
            ("stopped because", _esc(report.get("stopped_because"), "not recorded")),
            ("sites", ", ".join(f"<code>{_esc(s)}</code>" for s in _sites(report)) or "none"),
            ("best overall", (f"<code>{_esc(best.get('strategy'))}</code> — aggregate score "
                              f"<b>{_score(best.get('aggregate_score'))}</b>") if best else "no strategy scored")]
    proposals = [_map(_map(r).get("proposal")) for r in _list(report.get("rounds"))]
    if any(proposals):
        model = sum(_num(p.get("kept_from_model")) or 0.0 for p in proposals)
        fill = sum(_num(p.get("kept_from_fill")) or 0.0 for p in proposals)
        modes = sorted({_text(p.get("mode"), "?") for p in proposals if p})
        rows.append(("meta-agent", f"{model:.0f} strateg{'y' if model == 1 else 'ies'} from the model, {fill:.0f} "
                     f"from the fill proposer (mode {_esc(', '.join(modes))})"))
    for site, entry in _map(report.get("best_per_site")).items():
        e = _map(entry)
        found = f"<code>{_esc(e.get('strategy'))}</code> — score <b>{_score(e.get('score'))}</b>"
        rows.append((f"best at {site}", found if e else "no OK score"))
    meta = "".join(f"<dt>{_esc(k)}</dt><dd>{v}</dd>" for k, v in rows)
    return (f"<h1>Search report <code>{_esc(report.get('search_id'), '?')}</code></h1>"
            "<p>Scores are differences against the model trained on the unprocessed data at the same site "
            "(0 = no processing; higher is better).</p>"
            f'<dl class="meta">{meta}</dl>')


def _table(report: Report) -> str:
    strategies, sites = _strategies(report), _sites(report)
    if not strategies:
        return '<p class="muted">no strategy evaluated</p>'
    best_key = _map(report.get("best")).get("key")
    head = "".join(f"<th>{_esc(s)}</th>" for s in sites)
    # meta-agent searches only: which strategy the model gave and which the fill proposer added
    origins = any(s.get("origin") is not None for s in strategies)
    rows = []
    for s in strategies:
        cells = []
        for site in sites:
            e = _map(_map(s.get("sites")).get(site))
            if not e:
                cells.append('<td class="muted">—</td>')
            elif _num(e.get("score")) is not None:
                cells.append(f'<td class="num">{_score(e.get("score"))}</td>')
            else:
                cells.append(f'<td class="fail">{_esc(e.get("status") or e.get("state"), "no answer")}</td>')
        best = ' class="best"' if best_key is not None and s.get("key") == best_key else ""
        origin = f"<td>{_esc(s.get('origin'), '—')}</td>" if origins else ""
        rows.append(f"<tr{best}><td class=\"num\">{_esc(s.get('round'))}</td><td class=\"num\">{_esc(s.get('index'))}"
                    f"</td><td><code>{_esc(s.get('strategy'))}</code></td>{origin}"
                    f"<td class=\"num\">{_score(s.get('aggregate_score'))}</td>{''.join(cells)}</tr>")
    origin_head = '<th title="from model / fill">origin</th>' if origins else ""
    return (f"<table><thead><tr><th>round</th><th>#</th><th>strategy</th>{origin_head}<th>aggregate</th>"
            f"{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")


def render_html(report: Report, compare: Sequence[Report] = ()) -> str:
    """The whole page for one search; `compare` are the JSON reports of other searches (the baselines on the
    same budget), drawn beside this one in the best-so-far plot and labelled by their proposer."""
    sites = _sites(report)
    epsilon = _plot_epsilon(report)
    others = ", ".join(_esc(o.get("proposer"), "?") for o in compare)
    figures = [
        _figure_html("plot-scores", _plot_scores(report),
                     "Score of every strategy per site (coloured points, one per site and strategy) and the "
                     "size-weighted aggregate across sites (black diamonds; the line joins each round's best)."),
        _figure_html("plot-best-so-far", _plot_best_so_far(report, compare),
                     "Best aggregate score found so far against the number of strategies evaluated"
                     + (f", beside {others}." if others else ".")),
    ]
    small = [
        _figure_html("plot-time", _plot_time(report),
                     "Time per site over all tasks: spent on evaluation and on processing, saved by the prefix "
                     "cache, and estimated saved by evaluating on a sample."),
        _figure_html("plot-cache", _plot_cache(report), "Prefix-cache hit rate per site."),
        _figure_html("plot-epsilon", epsilon, "Privacy budget (epsilon) spent per site"
                     + (" — no DP: epsilon 0." if "no DP" in epsilon else ".")),
    ]
    notes = "".join(f"<li>{_esc(n)}</li>" for n in _list(report.get("notes")))
    notes = f"<ul>{notes}</ul>" if notes else '<p class="muted">none</p>'
    recipe = f"<code>{_esc(report['recipe'])}</code>" if report.get("recipe") else "no recipe written"
    title = _esc(f"autodp search {_text(report.get('search_id'), '?')}")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head><body>'
            f"{_header(report)}<h2>Search progress</h2>{''.join(figures)}"
            f"<h2>Cost and privacy per site ({len(sites)} site{'s' if len(sites) != 1 else ''})</h2>"
            f'<div class="grid">{"".join(small)}</div>'
            f"<h2>Every strategy</h2>{_table(report)}"
            f"<h2>Notes</h2>{notes}<h2>Recipe</h2><p>{recipe}</p>"
            "</body></html>\n")


def write_html(path: str | os.PathLike[str], report: Report, compare: Sequence[Report] = ()) -> Path:
    """Render and write the page atomically (temporary file in the same folder, fsync, rename)."""
    return write_text_atomic(Path(path), render_html(report, compare))
