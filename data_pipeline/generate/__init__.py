"""Generated edit pairs: the `generate` source of the pairs stage (docs/curation.md, "Generating pairs").

Modules: `instructions` (edit instructions from a VLM: OpenAI-compatible endpoint or local
transformers model, JSON-validated, cached), `anchor` (`AnchorEditor`: a diffusers image-editing
pipeline makes the edited anchor frame), `synth` (`TargetSynthesizer`: a diffusers video pipeline
animates the anchor into the target video), `detect` (`ObjectDetector`: zero-shot detection that the
edited object is present or absent), `vlm_check` (VLM instruction-following QA), `source` (the
candidate source wired into `pairs`), `tiny` (tiny random-initialised pipelines for tests),
`bench_generate` lives beside the other curation benchmarks in `data_pipeline/`.
"""
