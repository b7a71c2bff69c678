"""Leaderboards: per benchmark and per category, as Markdown, CSV and HTML with bar-chart PNGs.

    board = build_leaderboard("editverse", {"LIVEditor (ours)": rows}, total_items=200)
    paths = write_leaderboard(board, "/runs/x/leaderboard")   # editverse.md/.csv/.html, *_categories.csv, PNGs

A measured cell is the mean over the items whose row is ok. It is marked:
- "not computed: <why>" when no item has a value (no model path, no judge endpoint, a model that
  needs a plug-in), never a number;
- partial ("<value> (partial k/N)") when only k of the N items with results have a value, or
  fewer items have results than the benchmark has;
- an IVE-Bench dimension or total lacking a component is computed from the components present
  (as IVE-Bench's own script does) and marked "partial (without ...)", never filled in.
Published rows come from the papers, each with its citation, marked "published".
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
        missing, partial = [], False
        for metric, w in weights.items():
            c = cells.get(metric)
            if c is None or c.value is None:
                missing.append(IVEBENCH_LABELS[metric])
                continue
            lo, hi = IVE_RANGES.get(metric, (0.0, 1.0))
            num += w * (c.value - lo) / (hi - lo)
            den += w
            partial = partial or c.partial
        if not den:
            out[dim] = Cell(None, "not computed: no component (needs " + ", ".join(missing) + ")")
        else:
            note = ("partial (without " + ", ".join(missing) + ")") if missing else ("partial (items)" if partial else "")
            out[dim] = Cell(num / den, note)
    dims = [out[d] for d in IVE_DIMENSIONS]
    present = [c for c in dims if c.value is not None]
    if not present:
        out["total"] = Cell(None, "not computed: no dimension")
    else:
        lacking = [d for d, c in zip(IVE_DIMENSIONS, dims) if c.value is None]
        note = ("partial (without " + ", ".join(lacking) + ")") if lacking else ("partial" if any(c.partial for c in dims) else "")
        out["total"] = Cell(sum(c.value for c in present) / len(present), note)
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
                      category_sizes: Optional[Mapping[str, int]] = None, include_published: bool = True) -> Leaderboard:
    """`measured`: method name -> its metric rows for `benchmark` (any runs). `total_items`: the
    benchmark's item count (a run with fewer items scored is partial); `category_sizes` likewise per category."""
    board = Leaderboard(benchmark, columns_for(benchmark), total_items=total_items)
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
    return "\n".join(out)


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


def _bar_chart(path: Path, title: str, names: list, values: list, kinds: list, partial: list) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4.0, 0.7 * len(names) + 2), 3.2))
    colours = ["#4c72b0" if k == "measured" else "#bbbbbb" for k in kinds]
    bars = ax.bar(range(len(names)), values, color=colours, hatch=None)
    for bar, p in zip(bars, partial):
        if p:
            bar.set_hatch("//")
    from matplotlib.patches import Patch

    legend = [Patch(facecolor=c, hatch=h, label=l) for c, h, l in (("#4c72b0", None, "measured"), ("#bbbbbb", None, "published"),
                                                                   ("#4c72b0", "//", "partial"))
              if (l in kinds) or (l == "partial" and any(partial))]
    if legend:
        ax.legend(handles=legend, fontsize=7, loc="lower right")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax.set_title(title, fontsize=10)
    finite = [v for v in values if v == v]
    if finite:
        lo, hi = min(finite), max(finite)
        pad = (hi - lo) * 0.15 or abs(hi) * 0.05 or 1.0
        ax.set_ylim(lo - pad if lo > 0 and (hi - lo) < 0.5 * hi else min(0, lo - pad), hi + pad)
    fig.tight_layout()
    from liveditor.files import atomic_target

    with atomic_target(path, suffix=".partial.png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def _charts(board: Leaderboard, out_dir: Path) -> dict:
    """One PNG per column (methods as bars) and one per category (metrics as grouped bars). -> {title: file name}."""
    lab = labels(board.benchmark)
    charts = {}
    for c in board.columns:
        rows = [r for r in board.rows if r.cells[c].value is not None]
        if not rows:
            continue
        name = f"{board.benchmark}_{c}.png"
        _bar_chart(out_dir / name, f"{board.benchmark}: {lab.get(c, c)}", [r.method for r in rows],
                   [r.cells[c].value for r in rows], [r.kind for r in rows], [r.cells[c].partial for r in rows])
        charts[f"{lab.get(c, c)}"] = name
    for cat, rows in sorted(board.categories.items()):
        names, values, kinds, partial = [], [], [], []
        for r in rows:
            for c in board.columns:
                if r.cells[c].value is not None:
                    names.append(f"{lab.get(c, c)} / {r.method}" if len(rows) > 1 else lab.get(c, c))
                    values.append(r.cells[c].value)
                    kinds.append("measured")
                    partial.append(r.cells[c].partial)
        if names:
            name = f"{board.benchmark}_category_{_slug(cat)}.png"
            _bar_chart(out_dir / name, f"{board.benchmark} / {cat}", names, values, kinds, partial)
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

