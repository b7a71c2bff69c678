"""Stage 6a, dedup: merge every partition's pairs and mark near-duplicates.

First, byte-identical copies of one video under other names (equal `src_content_hash`, the probe
stage's sampled content hash): the pairs of the copy with the smallest video id are kept as they
are, and every kept pair of the other copies is rejected `duplicate_source` (`duplicate_of`: the same
clip of the kept copy), whatever its edit, since each copy draws its own edits and would otherwise
ship the same footage several times (`mark_source_copies`).

Then, two kept pairs are duplicates when they ask for the same edit (same synthetic edit, or the same
instruction up to case and punctuation), the perceptual hashes of their middle source frames AND of
their middle target frames are each within `max_hamming` bits, and the targets' quadrant colours
differ by at most `max_colour_difference` (pHash sees luma only). That is the same clip edited the
same way, reached through two input files or two datasets.

The rule (`mark_duplicates_reference`, quadratic, the spec): rows are ranked by `keep_by` (highest
first, ties: the smaller pair key); in rank order, a row that matches an earlier row that was kept
is a duplicate of the best-ranked such row (`reject_reason=duplicate`, `duplicate_of`); otherwise it
is kept. `mark_duplicates` gives the same result in near-linear time:

1. Rows that agree on everything the match looks at (both hashes, edit, instruction, colour) are
   collapsed to their best-ranked row: they share every match, so the others follow it (a group of
   byte-identical copies costs one row, not a quadratic number of comparisons).
2. Multi-index hashing: each 64-bit hash is cut into `max_hamming + 1` bands; by the pigeonhole
   principle two hashes within `max_hamming` bits agree on a whole band. Keying on (source band i,
   target band j) for every i, j, two matching rows share at least one key; rows sharing a source
   hash but not a target band (one clip, many different edits) are never compared.
3. The candidates sharing a key are checked with the full rule (numpy, vectorised, one key slot at
   a time), and the greedy pass in rank order runs over the matching edges only.

Cost: near-linear for spread-out hashes. Rows sharing one source hash are separated only by their
target hash's `64 / (max_hamming + 1)`-bit bands, so a group of G such rows costs about
`G^2 * (max_hamming + 1)^2 / 2^(64 / (max_hamming + 1))` candidate checks (vectorised); docs/benchmarks.md,
"Data curation at scale" has the 2M-row figures with 20% of rows on one source hash.
"""

from __future__ import annotations

import logging
import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .manifest import read_manifest, write_manifest
from .pairs import SCHEMA as PAIRS_SCHEMA
from .pairs import SCORE_COLUMNS
from .stage import StageContext

log = logging.getLogger("liveditor.curate")

SCHEMA = pa.schema(list(PAIRS_SCHEMA) + [pa.field("partition", pa.string()), pa.field("duplicate_of", pa.string())])


def _normalise_instruction(text) -> str:
    return " ".join(re.sub(r"[^a-z0-9 ]+", "", (text or "").lower()).split())


def _colour_close(a, b, tolerance: float) -> bool:
    if not a or not b:
        return True
    return max(abs(x - y) for x, y in zip(bytes.fromhex(a), bytes.fromhex(b))) <= tolerance


def _same_edit(a: dict, b: dict) -> bool:
    if a.get("edit") and b.get("edit"):
        return a["edit"] == b["edit"]
    return _normalise_instruction(a.get("instruction")) == _normalise_instruction(b.get("instruction"))


def _ranked_live(rows: list[dict], keep_by: str) -> list[dict]:
    """Kept rows with both hashes, best first: highest `keep_by`, ties by the smaller pair key."""
    live = [r for r in rows if not r.get("reject_reason") and r.get("src_phash") and r.get("tgt_phash")]
    return sorted(live, key=lambda r: (-(r.get(keep_by) if r.get(keep_by) is not None else float("-inf")), r["pair_key"]))


def _video_of(clip_id: str) -> str:
    """The video id of a clip id `<video_id>-<start>-<end>` (shots stage)."""
    return clip_id.rsplit("-", 2)[0]


def mark_source_copies(rows: list[dict]) -> list[dict]:
    """Reject (`duplicate_source`) the kept pairs of byte-identical copies of a video but one: per
    `src_content_hash`, the video with the smallest id (over every row, kept or not, so the choice does
    not depend on which edits passed) keeps its pairs. In place; returns rows."""
    videos: dict[str, str] = {}
    for r in rows:
        if r.get("src_content_hash") and r.get("clip_id"):
            video = _video_of(r["clip_id"])
            videos[r["src_content_hash"]] = min(videos.get(r["src_content_hash"], video), video)
    for r in rows:
        keep = videos.get(r.get("src_content_hash") or "")
        if keep is not None and not r.get("reject_reason") and _video_of(r["clip_id"]) != keep:
            r["duplicate_of"] = keep + r["clip_id"][len(_video_of(r["clip_id"])):]
            r["reject_reason"], r["reject_stage"] = "duplicate_source", "dedup"
    return rows


def _mark(row: dict, of: dict) -> None:
    row["duplicate_of"] = of["pair_key"]
    row["reject_reason"], row["reject_stage"] = "duplicate", "dedup"


def mark_duplicates_reference(rows: list[dict], max_hamming: int, keep_by: str, max_colour_difference: float = 255) -> list[dict]:
    """The dedup rule, quadratic: each row against every kept row ranked above it. For tests; returns rows."""
    kept: list[dict] = []
    for r in _ranked_live(rows, keep_by):
        s, t = int(r["src_phash"], 16), int(r["tgt_phash"], 16)
        for other in kept:
            if (s ^ int(other["src_phash"], 16)).bit_count() <= max_hamming and \
                    (t ^ int(other["tgt_phash"], 16)).bit_count() <= max_hamming and \
                    _same_edit(r, other) and _colour_close(r.get("tgt_colour"), other.get("tgt_colour"), max_colour_difference):
                _mark(r, other)
                break
        else:
            kept.append(r)
    return rows


def _bands(h: np.ndarray, n: int) -> list[np.ndarray]:
    """`n` bands of the 64-bit hashes `h` (`uint64` `[N]`), as even as possible, covering all 64 bits."""
    edges = np.linspace(0, 64, n + 1).round().astype(int)
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        mask = np.uint64((1 << int(hi - lo)) - 1)
        out.append((h >> np.uint64(lo)) & mask)
    return out


def _pairs_sharing_a_key(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All `(a, b)`, `a < b`, with `keys[a] == keys[b]` (`keys` `[N]`); work is proportional to their number."""
    order = np.argsort(keys, kind="stable")  # equal keys keep ascending row order
    k = keys[order]
    firsts, seconds = [], []
    active = np.arange(len(k) - 1)
    d = 1
    while len(active):
        active = active[k[active] == k[active + d]]  # positions whose bucket holds d more rows after them
        firsts.append(order[active])
        seconds.append(order[active + d])
        d += 1
        active = active[active + d < len(k)]
    if not firsts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(firsts).astype(np.int64), np.concatenate(seconds).astype(np.int64)


def _hashes(hex_digits: list[str]) -> np.ndarray:
    """64-bit hashes written as hex digits (imagehash's `str`) to `uint64` `[N]`."""
    bad = [h for h in hex_digits if len(h) > 16]
    if bad:
        raise ValueError(f"perceptual hashes must be 64-bit (16 hex digits); got {bad[:3]}: were the pairs made with another hash size?")
    return np.frombuffer(bytes.fromhex("".join(h.zfill(16) for h in hex_digits)), dtype=">u8").astype(np.uint64)


def _ids(values: list) -> np.ndarray:
    """Small integer ids of hashable `values`, equal ids for equal values."""
    table: dict = {}
    return np.fromiter((table.setdefault(v, len(table)) for v in values), dtype=np.int64, count=len(values))


def mark_duplicates(rows: list[dict], max_hamming: int, keep_by: str, max_colour_difference: float = 255) -> list[dict]:
    """Set `duplicate_of` and the reject reason on near-duplicate kept rows (in place), exactly as
    `mark_duplicates_reference` does, in near-linear time (module docstring). Returns rows."""
    ranked = _ranked_live(rows, keep_by)
    if len(ranked) < 2:
        return rows
    # 1. Collapse rows that agree on every input of the match rule to their best-ranked member.
    profile = [(r["src_phash"].lower(), r["tgt_phash"].lower(), r.get("edit") or None,
                _normalise_instruction(r.get("instruction")), (r.get("tgt_colour") or "").lower()) for r in ranked]
    group_of = _ids(profile)
    reps = np.unique(group_of, return_index=True)[1]  # first (best-ranked) row of each group, in rank order
    reps.sort()
    n = len(reps)
    src = _hashes([profile[i][0] for i in reps])
    tgt = _hashes([profile[i][1] for i in reps])
    edit = _ids([profile[i][2] for i in reps])
    has_edit = np.array([profile[i][2] is not None for i in reps])
    instruction = _ids([profile[i][3] for i in reps])
    colour_hex = [profile[i][4] for i in reps]
    has_colour = np.array([len(c) == 24 for c in colour_hex])
    colour = np.array([list(bytes.fromhex(c)) if len(c) == 24 else [0] * 12 for c in colour_hex], dtype=np.int16).reshape(n, 12)

    # 2.-3. Candidates: rows sharing a (source band i, target band j) key, for every i, j, each slot's
    # candidates checked with the full rule at once (vectorised) and only the matches kept: rows that
    # share a source hash are told apart by target bands alone, so a slot can hold millions of candidates.
    n_bands = max_hamming + 1
    src_bands, tgt_bands = _bands(src, n_bands), _bands(tgt, n_bands)
    matched = []
    for i in range(n_bands):
        for j in range(n_bands):
            # Any mixing works: a collision only adds a candidate, which the full check then drops.
            keys = (src_bands[i] * np.uint64(0x9E3779B97F4A7C15)) ^ (tgt_bands[j] + np.uint64(0x632BE59BD9B4E019))
            a, b = _pairs_sharing_a_key(keys)  # a < b: a is the better-ranked row
            close = (np.bitwise_count(src[a] ^ src[b]) <= max_hamming) & (np.bitwise_count(tgt[a] ^ tgt[b]) <= max_hamming)
            a, b = a[close], b[close]
            same_edit = np.where(has_edit[a] & has_edit[b], edit[a] == edit[b], instruction[a] == instruction[b])
            colour_ok = ~(has_colour[a] & has_colour[b]) | (np.abs(colour[a] - colour[b]).max(axis=1) <= max_colour_difference)
            keep = same_edit & colour_ok
            matched.append(a[keep] * n + b[keep])
    codes = np.unique(np.concatenate(matched))  # a pair found in several slots counts once
    a, b = codes // n, codes % n
    order = np.lexsort((a, b))  # by the later row, then the better one: each row's edges after its betters' are final
    dup_of = np.full(n, -1, dtype=np.int64)
    for better, later in zip(a[order].tolist(), b[order].tolist()):
        if dup_of[later] < 0 and dup_of[better] < 0:  # the best-ranked earlier row that was kept
            dup_of[later] = better

    # Collapsed members follow their group's first row: its duplicate target, or the first row itself.
    rep_index = np.full(len(ranked), -1, dtype=np.int64)
    rep_index[reps] = np.arange(n)
    first_of_group = np.full(group_of.max() + 1, -1, dtype=np.int64)
    first_of_group[group_of[reps]] = reps
    for pos, r in enumerate(ranked):
        k = rep_index[pos]
        if k >= 0:
            if dup_of[k] >= 0:
                _mark(r, ranked[reps[dup_of[k]]])
        else:
            first = first_of_group[group_of[pos]]
            target = dup_of[rep_index[first]]
            _mark(r, ranked[reps[target]] if target >= 0 else ranked[first])
    return rows


def run(ctx: StageContext) -> None:
    count = ctx.cfg.partition.count
    expected = [ctx.out_dir / "partitions" / f"part-{i:05d}-of-{count:05d}" / "pairs.parquet" for i in range(count)]
    missing = [str(p.parent.name) for p in expected if not p.exists()]
    if missing:
        raise FileNotFoundError(
            f"dedup needs the pairs of all {count} partitions; missing in {ctx.out_dir}: {missing[:10]}"
            f"{' ...' if len(missing) > 10 else ''}. Run the per-partition stages for them first "
            f"(partition.index=<i>, or the SLURM array), then rerun stages=[dedup,shard,report]")
    # Columnar: only the columns the rule reads become Python objects (2M full rows as dicts would
    # take minutes and gigabytes); the verdict columns are set back on the Arrow table.
    tables = []
    for p in expected:
        t = _conform(read_manifest(p), PAIRS_SCHEMA)
        tables.append(t.append_column("partition", pa.array([p.parent.name] * t.num_rows, pa.string()))
                       .append_column("duplicate_of", pa.nulls(t.num_rows, pa.string())))
    table = pa.concat_tables(tables) if tables else SCHEMA.empty_table()
    table = table.take(pc.sort_indices(table, [("pair_key", "ascending")]))
    if pc.count_distinct(table.column("pair_key")).as_py() != table.num_rows:
        raise ValueError("the same pair_key appears in two partitions: were partitions made with different partition.count? "
                         "Use a fresh out_dir when changing partition.count")
    d = ctx.cfg.dedup
    if d.keep_by not in table.column_names:
        raise ValueError(f"dedup.keep_by={d.keep_by!r} is not a pairs column: choose one of {list(SCORE_COLUMNS)}")
    read = ["pair_key", "clip_id", "src_content_hash", "src_phash", "tgt_phash", "edit", "instruction", "tgt_colour", d.keep_by,
            "reject_reason", "reject_stage"]
    rows = table.select(list(dict.fromkeys(read))).to_pylist()
    mark_source_copies(rows)
    mark_duplicates(rows, d.max_hamming, d.keep_by, d.max_colour_difference)
    for name in ("reject_reason", "reject_stage", "duplicate_of"):
        table = table.set_column(table.schema.get_field_index(name), name, pa.array([r.get(name) for r in rows], pa.string()))
    copies = sum(1 for r in rows if r.get("reject_reason") == "duplicate_source")
    dup = sum(1 for r in rows if r.get("reject_reason") == "duplicate")
    log.info("dedup: %d pairs, %d of byte-identical source copies and %d near-duplicates marked", len(rows), copies, dup)
    from .settings import settings_metadata, stage_settings

    write_manifest(table.cast(SCHEMA).replace_schema_metadata(settings_metadata(stage_settings(ctx.cfg, "dedup"))),
                   ctx.manifest("dedup"))


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` with exactly `schema`'s columns in its order; a column it lacks (an older manifest) is null."""
    cols = [table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type) for f in schema]
    return pa.Table.from_arrays(cols, schema=schema)
