"""Leaderboards: per benchmark and per category, as Markdown, CSV and HTML with bar-chart PNGs.

    board = build_leaderboard("editverse", {"LIVEditor (ours)": rows}, total_items=200)
    paths = write_leaderboard(board, "/runs/x/leaderboard")   # editverse.md/.csv/.html, *_categories.csv, PNGs

A measured cell is the mean over the items whose row is ok. It is marked:
- "not computed: <why>" when no item has a value (no model path, no judge endpoint, a model that
  needs a plug-in), never a number;
- partial ("<value> (partial k/N)") when only k of the N items with results have a value, or
  fewer items have results than the benchmark has;
- an IVE-Bench dimension or total lacking a component is computed from the components present
  (as IVE-Bench's own script does) and marked "partial (without ...)", never filled in; a total's
  note names every dimension and metric it lacks.
Published rows come from the papers, each with its citation, marked "published". In the charts a
partial value is drawn on an axis of its own, never beside complete values; axes start at 0.
"""

from __future__ import annotations

import csv
import html
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

from .metrics import PLUGIN_METRICS, metric_names
from .store import MetricRow

# Column labels of the published tables.
EDITVERSE_LABELS = {"editing_vlm_evaluation": "EQ", "pick_score_video_quality": "Pick", "frame_text_alignment": "Frame",
                    "video_text_alignment": "Video", "clip_temporal_consistency": "CLIP", "dino_temporal_consistency": "DINO"}
IVEBENCH_LABELS = {"subject_consistency_score": "SC", "background_consistency_score": "BC", "temporal_flickering_score": "TF",
                   "motion_smoothness_score": "MS", "vtss_score": "VTSS", "overall_semantic_consistency_score": "OSC",
                   "phrase_semantic_consistency_score": "PSC", "instruction_satisfaction_score": "IS",
                   "quantity_accuracy_score": "QA", "semantic_fidelity_score": "SF", "motion_fidelity_score": "MF",
                   "content_fidelity_score": "CF"}
VIEBENCH_LABELS = {"vie_instruction_following": "Instruction", "vie_quality": "Quality"}

LIVEDITOR_CITATION = "LIVEditor, arXiv 2605.04569 (EditVerseBench table)"
IVEBENCH_CITATION = "IVEBench, Chen et al., arXiv 2510.11647 (Short subset)"
PUBLISHED = {
    "editverse": [
        ("EditVerse", [7.65, 20.07, 26.73, 23.93, 98.56, 98.42]),
        ("Runway Aleph", [7.44, 20.42, 27.70, 24.27, 98.94, 98.60]),
        ("Lucy Edit", [5.89, 19.67, 26.00, 23.11, 98.49, 98.38]),
        ("Senorita-2M", [6.97, 19.71, 26.34, 23.24, 98.05, 97.99]),
        ("TokenFlow", [5.26, 19.73, 25.57, 22.70, 98.36, 98.09]),
        ("InsV2V", [5.21, 19.39, 24.99, 22.54, 97.15, 96.57]),
        ("STDF", [4.41, 19.45, 25.24, 22.26, 96.04, 95.22]),
        ("LIVEditor (ISA)", [7.89, 20.09, 27.19, 24.55, 99.32, 99.22]),
    ],
    "ivebench_short": [
        ("InsV2V", [0.65715, 0.802357, 0.374118, 0.794976]),
        ("VACE", [0.616088, 0.801204, 0.267255, 0.779804]),
        ("AnyV2V", [0.55052, 0.724021, 0.355533, 0.572005]),
        ("StableV2V", [0.509333, 0.693736, 0.420937, 0.413327]),
    ],
}
PUBLISHED_COLUMNS = {"editverse": list(EDITVERSE_LABELS), "ivebench_short": ["total", "quality", "compliance", "fidelity"]}
PUBLISHED_CITATIONS = {"editverse": LIVEDITOR_CITATION, "ivebench_short": IVEBENCH_CITATION}

# IVE-Bench: dimension -> {metric: weight}; rescaled metrics -> their published range.
IVE_DIMENSIONS = {
    "quality": {"subject_consistency_score": 1, "background_consistency_score": 1, "temporal_flickering_score": 1,
                "motion_smoothness_score": 1, "vtss_score": 4},
    "compliance": {"overall_semantic_consistency_score": 1, "phrase_semantic_consistency_score": 1,
                   "instruction_satisfaction_score": 3, "quantity_accuracy_score": 1},
    "fidelity": {"semantic_fidelity_score": 1, "motion_fidelity_score": 1, "content_fidelity_score": 3},
}
IVE_RANGES = {"instruction_satisfaction_score": (1.0, 5.0), "content_fidelity_score": (1.0, 5.0), "vtss_score": (-0.05, 0.1)}


def labels(benchmark: str) -> dict:
    if benchmark == "editverse":
        return EDITVERSE_LABELS
    if benchmark.startswith("ivebench"):
        return {**IVEBENCH_LABELS, "total": "Total", "quality": "Quality", "compliance": "Compliance", "fidelity": "Fidelity"}
    return VIEBENCH_LABELS


@dataclass
class Cell:
    """One leaderboard value: `value` None means not computed (`note` says why)."""

    value: Optional[float]
    note: str = ""  # "" (complete), "partial ...", "not computed: ..."
    published: bool = False  # shown with the paper's own digits

    @property
    def partial(self) -> bool:
        return self.note.startswith("partial")

    def text(self, digits: int = 4) -> str:
        if self.value is None:
            return self.note or "not computed"
        s = f"{self.value:.6g}" if self.published else f"{self.value:.{digits}f}"
        return f"{s} ({self.note})" if self.note else s


@dataclass
class Row:
    method: str
    kind: str  # "measured" | "published"
    citation: str
    cells: dict  # column -> Cell
    items: int = 0  # items with results (measured)


@dataclass
class Leaderboard:
    benchmark: str
    columns: list
    rows: list = field(default_factory=list)
    categories: dict = field(default_factory=dict)  # category -> list[Row] (measured only)
    total_items: Optional[int] = None
    outside: list = field(default_factory=list)  # IVE-Bench sources in neither subset: {"id", "source", "frames"}


def _short(reason: str) -> str:
    """"needs AMT-G (frame interpolation ...): plug it in ..." -> "needs AMT-G" (full reasons stay in the Parquet rows)."""
    for sep in (" (", ": "):
        head, found, _ = reason.partition(sep)
        if found and head.startswith("needs"):
            return head
    return reason[:120]


def _mean_cell(rows: Sequence[MetricRow], expected: int) -> Cell:
    ok = [r.value for r in rows if r.status == "ok"]
    counted = [r for r in rows if r.status != "not_applicable"]
    if not ok:
        reasons = sorted({r.detail for r in rows if r.status in ("not_computed", "error") and r.detail})
        if not rows:
            return Cell(None, "not computed: not scored (no rows)")
        if all(r.status == "not_applicable" for r in rows):
            return Cell(None, "not applicable")
        return Cell(None, "not computed: " + "; ".join(sorted({_short(r) for r in reasons})[:2]))
    value = sum(ok) / len(ok)
    applicable = len(counted) + max(0, expected - len(rows))
    return Cell(value, f"partial {len(ok)}/{applicable}" if len(ok) < applicable else "")


def _ive_dimensions(cells: dict) -> dict:
    """IVE-Bench's combination: rescale IS, CF to [0, 1] from [1, 5] and VTSS from [-0.05, 0.1];
    dimension = weighted mean of its components; total = mean of the three dimensions."""
    out = {}
    for dim, weights in IVE_DIMENSIONS.items():
        num = den = 0.0
        missing, fewer = [], []
        for metric, w in weights.items():
            c = cells.get(metric)
            if c is None or c.value is None:
                missing.append(IVEBENCH_LABELS[metric])
                continue
            lo, hi = IVE_RANGES.get(metric, (0.0, 1.0))
            num += w * (c.value - lo) / (hi - lo)
            den += w
            if c.partial:
                fewer.append(IVEBENCH_LABELS[metric])
        if not den:
            out[dim] = Cell(None, "not computed: no component (needs " + ", ".join(missing) + ")")
        else:
            parts = (["without " + ", ".join(missing)] if missing else []) + (["fewer items in " + ", ".join(fewer)] if fewer else [])
            out[dim] = Cell(num / den, f"partial ({'; '.join(parts)})" if parts else "")
    dims = [out[d] for d in IVE_DIMENSIONS]
    present = [c for c in dims if c.value is not None]
    if not present:
        out["total"] = Cell(None, "not computed: no dimension")
    else:
        # The total's note names every component it lacks: the dimensions, and each missing metric.
        lacking = [d for d, c in zip(IVE_DIMENSIONS, dims) if c.value is None]
        metrics = [m for weights in IVE_DIMENSIONS.values() for m in weights]
        missing = [IVEBENCH_LABELS[m] for m in metrics if cells.get(m) is None or cells[m].value is None]
        by_items = [IVEBENCH_LABELS[m] for m in metrics if cells.get(m) is not None and cells[m].value is not None and cells[m].partial]
        parts = (["without " + ", ".join(lacking)] if lacking else []) + \
                ([f"{len(missing)} of {len(metrics)} metrics missing: " + ", ".join(missing)] if missing else []) + \
                (["fewer items in " + ", ".join(by_items)] if by_items else [])
        out["total"] = Cell(sum(c.value for c in present) / len(present), f"partial ({'; '.join(parts)})" if parts else "")
    return out


def _measured_cells(benchmark: str, rows: Sequence[MetricRow], expected: int) -> dict:
    names = metric_names(benchmark)
    cells = {m: _mean_cell([r for r in rows if r.metric == m], expected) for m in names}
    if benchmark.startswith("ivebench"):
        cells.update(_ive_dimensions(cells))
    return cells


def columns_for(benchmark: str) -> list:
    names = list(metric_names(benchmark))
    return (["total", "quality", "compliance", "fidelity"] + names) if benchmark.startswith("ivebench") else names


def build_leaderboard(benchmark: str, measured: Mapping[str, Sequence[MetricRow]], total_items: Optional[int] = None,
                      category_sizes: Optional[Mapping[str, int]] = None, include_published: bool = True,
                      outside: Optional[Sequence[Mapping]] = None) -> Leaderboard:
    """`measured`: method name -> its metric rows for `benchmark` (any runs). `total_items`: the
    benchmark's item count (a run with fewer items scored is partial); `category_sizes` likewise per category.
    `outside`: IVE-Bench sources in neither subset (listed under the tables)."""
    board = Leaderboard(benchmark, columns_for(benchmark), total_items=total_items, outside=list(outside or []))
    for method, rows in measured.items():
        rows = [r for r in rows if r.benchmark == benchmark]
        items = {r.item for r in rows}
        board.rows.append(Row(method, "measured", "this run", _measured_cells(benchmark, rows, total_items or len(items)), len(items)))
        for cat in sorted({r.category for r in rows}):
            cat_rows = [r for r in rows if r.category == cat]
            expected = (category_sizes or {}).get(cat) or len({r.item for r in cat_rows})
            board.categories.setdefault(cat, []).append(
                Row(method, "measured", "this run", _measured_cells(benchmark, cat_rows, expected), len({r.item for r in cat_rows})))
    if include_published and benchmark in PUBLISHED:
        cols = PUBLISHED_COLUMNS[benchmark]
        for method, values in PUBLISHED[benchmark]:
            cells = {c: Cell(v, published=True) for c, v in zip(cols, values)}
            cells.update({c: Cell(None, "not published") for c in board.columns if c not in cells})
            board.rows.append(Row(method, "published", PUBLISHED_CITATIONS[benchmark], cells))
    return board


# ---------------------------------------------------------------- writers


def _table(board: Leaderboard, rows: Sequence[Row]) -> tuple[list, list]:
    lab = labels(board.benchmark)
    header = ["method", "kind", "source", "items"] + [lab.get(c, c) for c in board.columns]
    body = [[r.method, r.kind, r.citation, str(r.items) if r.kind == "measured" else ""] + [r.cells[c].text() for c in board.columns]
            for r in rows]
    return header, body


def _markdown(header, body) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in body]
    return "\n".join(lines)


def _plugin_notes(board: Leaderboard) -> list:
    if not board.benchmark.startswith("ivebench"):
        return []
    return [f"- {IVEBENCH_LABELS[m]} ({m}): not computed unless plugged in: needs {needs}" for m, needs in PLUGIN_METRICS.items()]


def render_markdown(board: Leaderboard) -> str:
    header, body = _table(board, board.rows)
    out = [f"# {board.benchmark} leaderboard", "",
           "Measured rows are this project's scores (`liveditor-eval`); published rows are copied from the cited paper. "
           "\"partial\" marks a mean over fewer items than the benchmark has, or a dimension/total lacking a component; "
           "\"not computed\" is never a number.", "", _markdown(header, body), ""]
    if board.total_items:
        out.insert(2, f"Benchmark items: {board.total_items}.")
    for cat, rows in sorted(board.categories.items()):
        h, b = _table(board, rows)
        out += [f"## {cat}", "", _markdown(h, b), ""]
    notes = _plugin_notes(board)
    if notes:
        out += ["## Metrics that need a plug-in", ""] + notes + [""]
    if board.outside:
        out += ["## Items in neither IVE-Bench subset", "", _outside_note(board), ""]
    return "\n".join(out)


def _outside_note(board: Leaderboard) -> str:
    return (f"{len(board.outside)} source(s) have a frame count outside IVE-Bench's 32-1024 (Short 32-128, Long 129-1024) "
            "and are scored in neither subset: " + ", ".join(f"{o['id']} ({o['frames']} frames)" for o in board.outside))


def _csv_rows(board: Leaderboard, rows: Sequence[Row], category: Optional[str]) -> list:
    out = []
    for r in rows:
        d = {"benchmark": board.benchmark, "category": category or "", "method": r.method, "kind": r.kind,
             "citation": r.citation, "items": r.items if r.kind == "measured" else ""}
        for c in board.columns:
            cell = r.cells[c]
            d[c] = "" if cell.value is None else repr(round(cell.value, 6))
            d[f"{c}_note"] = cell.note
        out.append(d)
    return out


def _write_csv(path: Path, rows: list) -> None:
    from liveditor.files import atomic_write_text

    if not rows:
        return
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


@dataclass
class Panel:
    """One chart axis: bars of one quantity on one scale."""

    title: str
    names: list
    values: list
    kinds: list  # "measured" | "published", per bar
    partial: list  # per bar


COLOURS = {"measured": "#4c72b0", "published": "#bbbbbb"}


def _draw_panel(ax, panel: Panel) -> None:
    bars = ax.bar(range(len(panel.names)), panel.values, color=[COLOURS[k] for k in panel.kinds])
    for bar, p in zip(bars, panel.partial):
        if p:
            bar.set_hatch("//")
    ax.set_xticks(range(len(panel.names)))
    ax.set_xticklabels(panel.names, rotation=30, ha="right", fontsize=8)
    ax.set_title(panel.title, fontsize=9)
    # The whole bar is shown: the axis includes 0 (a bar's length is its value), with room above the tallest.
    lo, hi = min(0.0, *panel.values), max(0.0, *panel.values)
    pad = 0.12 * ((hi - lo) or 1.0)
    ax.set_ylim(lo - (pad if lo < 0 else 0.0), hi + pad)
    for bar, v in zip(bars, panel.values):  # the value on each bar: differences near the top stay readable
        ax.annotate(f"{v:.4g}", (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom" if v >= 0 else "top",
                    fontsize=6, xytext=(0, 1 if v >= 0 else -1), textcoords="offset points")


def _figure(path: Path, title: str, panels: Sequence[Panel]) -> None:
    """Panels side by side (each its own y axis), the legend outside every axis, below the figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    ncols = min(4, len(panels))
    nrows = -(-len(panels) // ncols)
    width = sum(max(2.2, 0.55 * len(p.names) + 1.2) for p in panels[:ncols])
    fig, axes = plt.subplots(nrows, ncols, figsize=(max(4.0, width), 3.0 * nrows + 0.8), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        _draw_panel(ax, panel)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    kinds = {k for p in panels for k in p.kinds}
    handles = [Patch(facecolor=COLOURS[k], label=k) for k in ("measured", "published") if k in kinds]
    if any(x for p in panels for x in p.partial):
        handles.append(Patch(facecolor=COLOURS["measured"], hatch="//", label="partial (see the table's note)"))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.1 if handles else 0, 1, 1))
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7, frameon=False)
    from liveditor.files import atomic_target

    with atomic_target(path, suffix=".partial.png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def column_panels(board: Leaderboard, column: str) -> list:
    """A column's bars: complete values (published and measured) on one axis; partial values on
    another, never beside complete ones (a total from some of its components is another quantity)."""
    lab = labels(board.benchmark)
    rows = [r for r in board.rows if r.cells[column].value is not None]
    full = [r for r in rows if not r.cells[column].partial]
    part = [r for r in rows if r.cells[column].partial]
    panels = []
    if full:
        panels.append(Panel(f"{lab.get(column, column)}", [r.method for r in full], [r.cells[column].value for r in full],
                            [r.kind for r in full], [False] * len(full)))
    if part:
        panels.append(Panel(f"{lab.get(column, column)}: partial, not comparable", [r.method for r in part],
                            [r.cells[column].value for r in part], [r.kind for r in part], [True] * len(part)))
    return panels


def category_panels(board: Leaderboard, rows: Sequence[Row]) -> list:
    """A category's bars: one axis per metric (scales differ: EQ 0-9, CLIP 0-100, TF 0-1), methods
    as bars; a partial value gets an axis of its own beside the metric's complete ones."""
    lab = labels(board.benchmark)
    panels = []
    for c in board.columns:
        have = [r for r in rows if r.cells[c].value is not None]
        for partial in (False, True):
            sel = [r for r in have if r.cells[c].partial == partial]
            if sel:
                panels.append(Panel(lab.get(c, c) + (" (partial)" if partial else ""), [r.method for r in sel],
                                    [r.cells[c].value for r in sel], ["measured"] * len(sel), [partial] * len(sel)))
    return panels


def _charts(board: Leaderboard, out_dir: Path) -> dict:
    """One PNG per column (methods as bars) and one per category (an axis per metric). -> {title: file name}."""
    lab = labels(board.benchmark)
    charts = {}
    for c in board.columns:
        panels = column_panels(board, c)
        if not panels:
            continue
        name = f"{board.benchmark}_{c}.png"
        _figure(out_dir / name, f"{board.benchmark}: {lab.get(c, c)}", panels)
        charts[f"{lab.get(c, c)}"] = name
    for cat, rows in sorted(board.categories.items()):
        panels = category_panels(board, rows)
        if panels:
            name = f"{board.benchmark}_category_{_slug(cat)}.png"
            _figure(out_dir / name, f"{board.benchmark} / {cat}", panels)
            charts[f"category: {cat}"] = name
    return charts


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in text).strip("_").lower() or "none"


def _html_table(header, body) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    rows = []
    for row in body:
        cls = "published" if row[1] == "published" else "measured"
        rows.append(f"<tr class='{cls}'>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def render_html(board: Leaderboard, charts: Mapping[str, str]) -> str:
    header, body = _table(board, board.rows)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(board.benchmark)} leaderboard</title>",
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1.5em}"
             "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}tr.published{color:#666}"
             "img{margin:4px;border:1px solid #eee}</style></head><body>",
             f"<h1>{html.escape(board.benchmark)} leaderboard</h1>",
             "<p>Measured rows: this project's scores. Published rows: from the cited paper. "
             "\"partial\" marks fewer items than the benchmark, or a dimension/total lacking a component; "
             "\"not computed\" is never a number.</p>", _html_table(header, body)]
    for cat, rows in sorted(board.categories.items()):
        h, b = _table(board, rows)
        parts += [f"<h2>{html.escape(cat)}</h2>", _html_table(h, b)]
    notes = _plugin_notes(board)
    if notes:
        parts += ["<h2>Metrics that need a plug-in</h2><ul>"] + [f"<li>{html.escape(n[2:])}</li>" for n in notes] + ["</ul>"]
    if board.outside:
        parts += ["<h2>Items in neither IVE-Bench subset</h2>", f"<p>{html.escape(_outside_note(board))}</p>"]
    parts.append("<h2>Charts</h2>")
    parts += [f"<figure style='display:inline-block'><img src='{html.escape(f)}' alt='{html.escape(t)}'>"
              f"<figcaption>{html.escape(t)}</figcaption></figure>" for t, f in charts.items()]
    parts.append("</body></html>")
    return "\n".join(parts)


def write_leaderboard(board: Leaderboard, out_dir) -> dict:
    """Write `<benchmark>.md`, `.csv` (overall), `_categories.csv`, `.html` and the PNGs; returns their paths."""
    from liveditor.files import atomic_write_text

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    b = board.benchmark
    charts = _charts(board, out_dir)
    paths = {"md": out_dir / f"{b}.md", "csv": out_dir / f"{b}.csv", "categories_csv": out_dir / f"{b}_categories.csv",
             "html": out_dir / f"{b}.html"}
    atomic_write_text(paths["md"], render_markdown(board))
    _write_csv(paths["csv"], _csv_rows(board, board.rows, None))
    _write_csv(paths["categories_csv"], [r for cat, rows in sorted(board.categories.items()) for r in _csv_rows(board, rows, cat)])
    atomic_write_text(paths["html"], render_html(board, charts))
    paths["charts"] = [out_dir / f for f in charts.values()]
    return paths


def read_leaderboard_csv(path) -> list:
    """The rows of a leaderboard CSV as dicts (values as strings)."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))

