"""Data curation: raw videos to WebDataset edit-pair shards (`liveditor-curate`, docs/curation.md).

Stages, in order, one module each: `probe`, `shots`, `filters`, `clip_scores`, `pairs`, `dedup`,
`shard`, `report`; `cli` runs them (Hydra), `stage` holds partitions and the resumable runner,
`manifest` the Parquet manifests and atomic writes. Building blocks: `shots` (our shot detector),
`clip_model` (open_clip + aesthetic head), `synthetic_editor` (verifiable global edits),
`synthetic_clips` (videos with known boundaries); `bench_shots` benchmarks shot detection.
"""

from liveditor._layout import hand_over

# Imported under its bare name (repo root on sys.path) this hands over to the installed module of
# that name, or fails as if this folder were absent. A package body added here goes under
# `if not hand_over(__name__, __file__):`.
hand_over(__name__, __file__)
