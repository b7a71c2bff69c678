"""Stage 6a, dedup: merge every partition's pairs and mark near-duplicates.

Two kept pairs are duplicates when they ask for the same edit (same synthetic edit, or the same
instruction up to case and punctuation), the perceptual hashes of their middle source frames AND of
their middle target frames are each within `max_hamming` bits, and the targets' quadrant colours
differ by at most `max_colour_difference` (pHash sees luma only). That is the same clip edited the
same way, reached through two input files or two datasets. Of a group, the pair with the highest
`keep_by` score stays (ties: the smaller pair key); the others get `reject_reason=duplicate` and
`duplicate_of`. Candidates are found by splitting the 64-bit source hash into `max_hamming + 1`
bands: by the pigeonhole principle two hashes within `max_hamming` bits agree on a whole band,
so only pairs sharing a band are compared (near-linear, not quadratic).
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict

import pyarrow as pa

from .manifest import read_manifest, write_manifest
from .pairs import SCHEMA as PAIRS_SCHEMA
from .stage import StageContext

log = logging.getLogger("liveditor.curate")

SCHEMA = pa.schema(list(PAIRS_SCHEMA) + [pa.field("partition", pa.string()), pa.field("duplicate_of", pa.string())])


def _bands(h: int, n: int) -> list[tuple[int, int]]:
    width = 64 // n
    return [(i, (h >> (i * width)) & ((1 << width) - 1)) for i in range(n)]


def _colour_close(a, b, tolerance: float) -> bool:
    if not a or not b:
        return True
    return max(abs(x - y) for x, y in zip(bytes.fromhex(a), bytes.fromhex(b))) <= tolerance


def _same_edit(a: dict, b: dict) -> bool:
    if a.get("edit") and b.get("edit"):
        return a["edit"] == b["edit"]
    norm = lambda t: re.sub(r"[^a-z0-9 ]+", "", (t or "").lower()).split()  # noqa: E731
    return norm(a.get("instruction")) == norm(b.get("instruction"))


def mark_duplicates(rows: list[dict], max_hamming: int, keep_by: str, max_colour_difference: float = 255) -> list[dict]:
    """Set `duplicate_of` and the reject reason on near-duplicate kept rows (in place); returns rows."""
    live = [r for r in rows if not r.get("reject_reason") and r.get("src_phash") and r.get("tgt_phash")]
    rank = sorted(live, key=lambda r: (-(r.get(keep_by) if r.get(keep_by) is not None else float("-inf")), r["pair_key"]))
    n_bands = max_hamming + 1
    buckets: dict[tuple[int, int], list[dict]] = defaultdict(list)
    for r in rank:  # best first: a row is compared only with better rows already kept
        s, t = int(r["src_phash"], 16), int(r["tgt_phash"], 16)
        bands = _bands(s, n_bands)
        seen = set()
        for band in bands:
            for other in buckets[band]:
                if id(other) in seen:
                    continue
                seen.add(id(other))
                if bin(s ^ int(other["src_phash"], 16)).count("1") <= max_hamming and \
                        bin(t ^ int(other["tgt_phash"], 16)).count("1") <= max_hamming and \
                        _same_edit(r, other) and _colour_close(r.get("tgt_colour"), other.get("tgt_colour"), max_colour_difference):
                    r["duplicate_of"] = other["pair_key"]
                    r["reject_reason"], r["reject_stage"] = "duplicate", "dedup"
                    break
            if r.get("duplicate_of"):
                break
        if not r.get("duplicate_of"):
            for band in bands:
                buckets[band].append(r)
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
    rows = []
    for p in expected:
        for r in read_manifest(p).to_pylist():
            r["partition"] = p.parent.name
            rows.append(r)
    rows.sort(key=lambda r: r["pair_key"])
    keys = [r["pair_key"] for r in rows]
    if len(set(keys)) != len(keys):
        raise ValueError("the same pair_key appears in two partitions: were partitions made with different partition.count? "
                         "Use a fresh out_dir when changing partition.count")
    d = ctx.cfg.dedup
    mark_duplicates(rows, d.max_hamming, d.keep_by, d.max_colour_difference)
    dup = sum(1 for r in rows if r.get("duplicate_of"))
    log.info("dedup: %d pairs, %d duplicates marked", len(rows), dup)
    write_manifest(rows, ctx.manifest("dedup"), SCHEMA)
