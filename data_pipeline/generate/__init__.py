"""Generated edit pairs: the `generate` source of the pairs stage (docs/curation.md, "Generating pairs").

Modules: `instructions` (edit instructions from a VLM: an OpenAI-compatible endpoint or a local
transformers model, JSON-validated, cached), `anchor` (`AnchorEditor`: a diffusers image-editing
pipeline makes the edited anchor frame), `synth` (`TargetSynthesizer`: a diffusers video pipeline
animates the anchor into the target video), `detect` (`ObjectDetector`: zero-shot detection that the
edited object is present or absent), `vlm_check` (the VLM's instruction-following score), `source`
(the candidate source wired into `pairs`), `loading` (the one place these pipelines are loaded from
local folders, and their weight fingerprints), `tiny` and `tiny_vlm` (tiny random-initialised models
for tests). The throughput benchmark is `liveditor.data_pipeline.bench_generate`.
"""
