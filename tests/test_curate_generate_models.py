"""The generate source's model wrappers on tiny random-initialised pipelines saved to disk: the
anchor editor (InstructPix2Pix, FLUX Kontext), the target synthesiser (Wan2.2-TI2V-style I2V, Wan
VACE), the object detector (Grounding DINO, OWLv2). Each loads from its folder, edits or generates a
batch in one call at the requested size and frame count, gives each sample the output it gets alone,
and fails with the config key named when a folder, class or setting is wrong."""

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from liveditor.data_pipeline.generate import tiny
from liveditor.data_pipeline.generate.anchor import ANCHOR_PIPELINES, AnchorEditor
from liveditor.data_pipeline.generate.detect import ObjectDetector
from liveditor.data_pipeline.generate.loading import ModelConfigError, weights_fingerprint
from liveditor.data_pipeline.generate.synth import TargetSynthesizer, edge_map, vace_control
from liveditor.eval.detection import count_above, detection_threshold, fraction_detected, phrase_scores

F32 = torch.float32


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("generate_models")
    out = {}
    for kind in tiny.ANCHOR_KINDS:
        out[kind] = tiny.make_tiny_anchor_pipeline_dir(root / kind, kind)
    for kind in tiny.VIDEO_KINDS:
        out[kind] = tiny.make_tiny_video_pipeline_dir(root / kind, kind)
    for kind in tiny.DETECTOR_KINDS:
        out[kind] = tiny.make_tiny_detector_dir(root / kind, kind)
    return out


def _frames(n, h, w, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def _close(a, b):
    """uint8 outputs equal up to one level (float32 batched vs single matmuls round differently)."""
    return a.shape == b.shape and int(np.abs(a.astype(int) - b.astype(int)).max()) <= 1


@pytest.mark.parametrize("kind", ["instruct_pix2pix", "flux_kontext"])
def test_anchor_edit_is_batched_sized_and_batch_independent(models, kind, monkeypatch):
    editor = AnchorEditor.from_config({"path": str(models[kind]), "steps": 2}, "cpu", F32)
    assert editor.class_name in ANCHOR_PIPELINES
    frames = _frames(3, 40, 72)  # 40x72 is off Kontext's 16-pixel grid: the output is resized back
    calls = []
    original_call = type(editor.pipe).__call__

    def counting_call(pipe, *args, **kwargs):
        calls.append(len(kwargs["prompt"]))
        return original_call(pipe, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(type(editor.pipe), "__call__", counting_call)
        out = editor.edit(frames, ["make it red", "add a cat", "remove the car"], [11, 12, 13])
    assert calls == [3]  # one pipeline call for the batch
    assert [o.shape for o in out] == [(40, 72, 3)] * 3 and all(o.dtype == np.uint8 for o in out)
    alone = editor.edit(frames[1:2], ["add a cat"], [12])[0]
    assert _close(alone, out[1])
    other_neighbours = editor.edit([frames[2], frames[1]], ["remove the car", "add a cat"], [99, 12])[1]
    assert _close(other_neighbours, out[1])
    assert not _close(editor.edit(frames[1:2], ["add a cat"], [13])[0], out[1])  # the seed matters
    prov = editor.provenance()
    assert prov["pipeline_class"] == editor.class_name and prov["path"] == str(models[kind])
    assert prov["steps"] == 2 and prov["dtype"] == "float32" and len(prov["weights_sha256"]) == 64
    json.dumps(prov)


def test_qwen_image_edit_anchor_batch(models):
    """Qwen-Image-Edit's own call style (true CFG with a negative prompt, explicit size); its pipeline
    encodes the conditioning image at about 1 MP, so this test keeps to one batch and one sample."""
    editor = AnchorEditor.from_config({"path": str(models["qwen_image_edit"]), "steps": 1}, "cpu", F32)
    assert editor.class_name == "QwenImageEditPipeline"
    frames = _frames(2, 32, 48, seed=3)
    out = editor.edit(frames, ["make it red", "add a small cat to the left"], [1, 2])
    assert [o.shape for o in out] == [(32, 48, 3)] * 2
    assert _close(editor.edit(frames[1:], ["add a small cat to the left"], [2])[0], out[1])
    assert editor.provenance()["true_cfg_scale"] == 4.0


@pytest.mark.parametrize("kind,size,structure", [("wan_i2v", (32, 64), "none"), ("wan_vace", (32, 48), "edges"),
                                                 ("wan21_i2v", (32, 48), "none")])
def test_video_generate_is_sized_and_batch_independent(models, kind, size, structure):
    synth = TargetSynthesizer.from_config({"path": str(models[kind]), "steps": 2, "structure": structure}, "cpu", F32)
    anchors = _frames(2, *size, seed=1)
    sources = [np.stack(_frames(7, *size, seed=2 + i)) for i in range(2)]
    videos = synth.generate(anchors, ["a cat walks", "a red car"], sources, [5, 6], num_frames=5)
    assert [v.shape for v in videos] == [(5, *size, 3)] * 2 and all(v.dtype == np.uint8 for v in videos)
    alone = synth.generate(anchors[1:], ["a red car"], sources[1:], [6], num_frames=5)[0]
    assert _close(alone, videos[1])
    prov = synth.provenance()
    assert prov["pipeline_class"] == synth.class_name and prov["steps"] == 2
    assert ("structure" in prov) == (kind == "wan_vace")
    with pytest.raises(ValueError, match="4k\\+1"):
        synth.generate(anchors[:1], ["x"], sources[:1], [0], num_frames=6)
    m = synth.size_multiple
    bad = _frames(1, size[0] + m // 2, size[1])
    with pytest.raises(ValueError, match=f"multiple of {m}"):
        synth.generate(bad, ["x"], sources[:1], [0], num_frames=5)


def test_wan_i2v_batch_has_one_condition_per_anchor(models):
    """Two different anchors in one call: each video starts from its own anchor's condition (diffusers
    0.42.1 alone would build 2 x 2 conditions and fail or mix them)."""
    synth = TargetSynthesizer.from_config({"path": str(models["wan_i2v"]), "steps": 1}, "cpu", F32)
    black, white = np.zeros((32, 32, 3), np.uint8), np.full((32, 32, 3), 255, np.uint8)
    src = np.zeros((5, 32, 32, 3), np.uint8)
    both = synth.generate([black, white], ["a", "a"], [src, src], [3, 3], num_frames=5)
    assert not _close(both[0], both[1])
    assert _close(both[1], synth.generate([white], ["a"], [src], [3], num_frames=5)[0])


def test_wan21_i2v_image_encoder_sees_the_anchor(models):
    """Wan2.1 I2V's CLIP image encoder gets the anchor's real pixels (a white anchor normalises to about
    (1 - 0.48) / 0.27 = 1.9 under CLIP's mean and std; a [0, 1] tensor rescaled twice would be about -1.8)."""
    synth = TargetSynthesizer.from_config({"path": str(models["wan21_i2v"]), "steps": 1}, "cpu", F32)
    seen = []
    synth.pipe.image_encoder.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs["pixel_values"]),
                                                       with_kwargs=True)
    white = np.full((32, 48, 3), 255, np.uint8)
    videos = synth.generate([white, white // 2], ["a", "b"], [np.zeros((5, 32, 48, 3), np.uint8)] * 2, [1, 2], num_frames=5)
    assert len(seen) == 2 and [v.shape for v in videos] == [(5, 32, 48, 3)] * 2  # one call per sample
    assert float(seen[0].min()) > 1.5 and float(seen[1].max()) < 0.5


def test_vace_control_video_keeps_the_anchor_and_maps_the_source():
    anchor = np.full((16, 32, 3), 200, np.uint8)
    source = np.zeros((3, 32, 64, 3), np.uint8)  # another size: resized to the anchor's
    source[:, :, 32:] = 255                      # a vertical edge in the middle
    video, mask = vace_control(anchor, source, 5, "edges")
    assert len(video) == len(mask) == 5
    assert np.array_equal(np.asarray(video[0]), anchor) and np.asarray(mask[0]).max() == 0
    assert all(np.asarray(m).min() == 255 for m in mask[1:])
    edges = np.asarray(video[2])[..., 0]
    assert edges.shape == (16, 32) and edges[:, 15:17].min() > 200 and edges[:, :8].max() == 0
    grey, _ = vace_control(anchor, source, 5, "none")
    assert all(np.asarray(f).min() == np.asarray(f).max() == 127 for f in grey[1:])
    assert edge_map(np.zeros((8, 8, 3), np.uint8)).max() == 0


@pytest.mark.parametrize("kind", tiny.DETECTOR_KINDS)
def test_detector_presence_is_a_deterministic_fraction(models, kind):
    blank = np.full((48, 64, 3), 255, np.uint8)
    drawn = blank.copy()
    drawn[12:36, 16:48] = (200, 30, 30)  # a red box
    frames = [blank, drawn, blank, drawn]
    detector = ObjectDetector.from_config({"path": str(models[kind])}, "cpu", F32)
    value = detector.presence(frames, "a cat")
    assert 0.0 <= value <= 1.0 and detector.presence(frames, "a cat") == value

    def presence_at(box_threshold, text_threshold=0.0):
        at = ObjectDetector(detector.model, detector.processor, dataclasses.replace(
            detector.cfg, box_threshold=box_threshold, text_threshold=text_threshold), detector.model_type, F32)
        return at.presence(frames, "a cat")

    assert presence_at(0.0) == 1.0 and presence_at(1.01) == 0.0
    # a threshold between the blank and the drawn frame's best scores detects in exactly half the frames
    scores = phrase_scores(detector.model, detector.processor, frames, "a cat")
    best_blank, best_drawn = scores[0].max(), scores[1].max()
    assert all(np.array_equal(scores[i], scores[i % 2]) for i in range(4))  # same frame, same scores, any batch slot
    assert best_blank != best_drawn  # true of these seeded random weights; the split below needs it
    assert presence_at(float((best_blank + best_drawn) / 2)) == 0.5
    prov = detector.provenance()
    assert prov["detector"] in ("Grounding DINO", "OWLv2") and prov["box_threshold"] == 0.35
    with pytest.raises(ValueError, match="empty object phrase"):
        detector.presence(frames, " ")


def test_detection_threshold_rule_on_given_scores():
    frames = [np.array([0.1, 0.36]), np.array([0.35, 0.2]), np.array([]), np.array([0.9, 0.8, 0.7])]
    assert [count_above(s, 0.35) for s in frames] == [1, 0, 0, 3]  # strictly above, as transformers keeps boxes
    assert fraction_detected(frames, 0.35) == 0.5
    assert fraction_detected(frames, 0.0) == 0.75 and fraction_detected(frames, 0.95) == 0.0
    assert detection_threshold(0.35, 0.25) == 0.35 and detection_threshold(0.2, 0.25) == 0.25
    with pytest.raises(ValueError):
        fraction_detected([], 0.5)


def test_bad_folders_classes_and_settings_name_the_config_key(models, tmp_path):
    with pytest.raises(ModelConfigError, match=r"pairs\.generate\.anchor\.path is not set"):
        AnchorEditor.from_config({"path": ""}, "cpu", F32)
    with pytest.raises(ModelConfigError, match=r"pairs\.generate\.video\.path='.*nowhere' does not exist"):
        TargetSynthesizer.from_config({"path": str(tmp_path / "nowhere")}, "cpu", F32)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelConfigError, match=r"pairs\.generate\.anchor\.path=.*has no model_index\.json"):
        AnchorEditor.from_config({"path": str(tmp_path / "empty")}, "cpu", F32)
    with pytest.raises(ModelConfigError, match=r"pairs\.generate\.anchor\.pipeline_class='Nope'.*FluxKontextPipeline"):
        AnchorEditor.from_config({"path": str(models["instruct_pix2pix"]), "pipeline_class": "Nope"}, "cpu", F32)
    with pytest.raises(ModelConfigError, match=r"pairs\.generate\.anchor\.pipeline_class=auto.*WanImageToVideoPipeline"):
        AnchorEditor.from_config({"path": str(models["wan_i2v"])}, "cpu", F32)  # a video pipeline is no image editor
    with pytest.raises(ModelConfigError, match=r"pairs\.generate\.video\.stepz"):
        TargetSynthesizer.from_config({"path": str(models["wan_i2v"]), "stepz": 3}, "cpu", F32)
    with pytest.raises(ValueError, match=r"pairs\.generate\.video\.structure='edges' needs .*WanVACEPipeline"):
        TargetSynthesizer.from_config({"path": str(models["wan_i2v"]), "structure": "edges"}, "cpu", F32)
    with pytest.raises(ValueError, match=r"pairs\.generate\.video\.structure='depth'"):
        TargetSynthesizer.from_config({"path": str(models["wan_vace"]), "structure": "depth"}, "cpu", F32)
    broken = tmp_path / "broken"
    shutil.copytree(models["wan_vace"], broken)
    shutil.rmtree(broken / "transformer")
    with pytest.raises(ModelConfigError, match=r"pairs\.generate\.video\.path=.*did not load as WanVACEPipeline"):
        TargetSynthesizer.from_config({"path": str(broken)}, "cpu", F32)
    with pytest.raises(ModelConfigError, match=r"pairs\.generate\.detect\.path=.*has no config\.json"):
        ObjectDetector.from_config({"path": str(models["wan_i2v"])}, "cpu", F32)
    with pytest.raises(ModelConfigError, match=r"pairs\.generate\.detect\.path=.*'umt5'.*not a zero-shot detector"):
        ObjectDetector.from_config({"path": str(models["wan_i2v"] / "text_encoder")}, "cpu", F32)


def test_weights_fingerprint_reads_configs_whole_and_weight_edges(tmp_path):
    folder = tmp_path / "model"
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text('{"_class_name": "X"}')
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(bytes(3 << 20))  # 3 MiB of zeros
    base = weights_fingerprint(folder)
    assert weights_fingerprint(folder) == base

    def changed(path, offset):
        data = bytearray(path.read_bytes())
        data[offset] ^= 1
        path.write_bytes(bytes(data))
        value = weights_fingerprint(folder)
        data[offset] ^= 1
        path.write_bytes(bytes(data))
        return value != base

    assert changed(weights, 10) and changed(weights, (3 << 20) - 10)  # first and last MiB are read
    assert not changed(weights, (3 << 20) // 2)  # the middle of a big weight file is not (documented)
    assert changed(folder / "model_index.json", 3)  # small files are read whole
    weights.write_bytes(bytes((3 << 20) + 1))
    assert weights_fingerprint(folder) != base  # sizes are part of it


def test_bench_generate_tiny_runs_the_three_stages(capsys):
    from liveditor.data_pipeline.bench_generate import main

    result = main(["--tiny", "--batch", "2", "--warmup-steps", "1", "--detect-frames", "3"])
    out = capsys.readouterr().out
    assert json.loads(out.splitlines()[0]) == result, out
    assert result["tiny"] and result["batch"] == 2 and result["frames"] == 5 and result["detect_frames"] == 3
    stages = result["seconds_per_pair"]
    assert set(stages) == {"anchor", "video", "detect"} and all(v > 0 for v in stages.values()), result
    assert result["pairs_per_hour_per_gpu"] == pytest.approx(3600 / sum(stages.values()), rel=1e-3), result
    assert result["video_tokens"] == 2 * (32 // 32) * (64 // 32)  # (5 - 1) / 4 + 1 latent frames; TI2V: 32-px patches
