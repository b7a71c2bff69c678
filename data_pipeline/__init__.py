"""Data curation: raw videos to WebDataset edit-pair shards (`liveditor-curate`, docs/curation.md).

Stages, in order, one module each: `probe`, `shots`, `filters`, `clip_scores`, `pairs`, `dedup`,
`shard`, `report`; `cli` runs them (Hydra), `stage` holds partitions and the resumable runner,
`manifest` the Parquet manifests and atomic writes. Building blocks: `shots` (our shot detector),
`clip_model` (open_clip + aesthetic head), `synthetic_editor` (verifiable global edits),
`synthetic_clips` (videos with known boundaries); `bench_shots` benchmarks shot detection.
"""
