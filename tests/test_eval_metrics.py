"""Each metric against values worked out by hand on constructed frames, with tiny random models in
the real on-disk formats standing in for the released weights."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from liveditor.eval.benchmarks import Item
from liveditor.eval.frames import CLIP_MEAN, CLIP_STD, clip_pixels, dinov2_pixels, pickscore_shrink, short_side_size
from liveditor.eval.judge import judge_frame_indices
from liveditor.eval.leaderboard import Cell, _ive_dimensions
from liveditor.eval.metrics import (
    _consecutive_max0_cos, _first_and_previous, build_metrics, expected_quantity, parse_total_score,
    quantity_accuracy_score, temporal_flickering_score, viclip_frame_indices,
)
from liveditor.eval.models import EvalModels, NotApplicable, NotComputed
from liveditor.eval.tiny import make_clip_dir, make_dino_vit_dir, make_dinov2_dir, make_viclip_checkpoint
from liveditor.eval.viclip import load_viclip

ITEM = Item("0", "src.mp4", "turn the car red", "a red car on a road", "color")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval_models")
    clip = make_clip_dir(d / "clip", "tiny")
    paths = {"clip_l14": clip, "pickscore": clip, "clip_b32": clip, "dinov2": make_dinov2_dir(d / "dinov2"),
             "dino_vits16": make_dino_vit_dir(d / "dino"), "viclip": make_viclip_checkpoint(d / "viclip.pth")}
    return EvalModels(paths, device="cpu", batch_frames=4)


def noise_video(t=5, h=120, w=160, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


def test_temporal_flickering_by_hand():
    same = np.repeat(noise_video(1), 6, axis=0)
    assert temporal_flickering_score(same, same, ITEM) == 1.0
    black, white = np.zeros((8, 8, 3), np.uint8), np.full((8, 8, 3), 255, np.uint8)
    alternating = np.stack([black, white] * 3)
    assert temporal_flickering_score(alternating, alternating, ITEM) == 0.0
    # 0 -> 51 -> 51: mean |diff| = (51 + 0) / 2 = 25.5, score (255 - 25.5) / 255 = 0.9
    steps = np.stack([np.full((4, 4, 3), v, np.uint8) for v in (0, 51, 51)])
    assert temporal_flickering_score(steps, steps, ITEM) == pytest.approx(0.9)
    with pytest.raises(NotApplicable, match="one-frame"):
        temporal_flickering_score(steps[:1], steps[:1], ITEM)


def test_consistency_formulas_on_constructed_features():
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    diag = (e1 + e2) / math.sqrt(2)
    # EditVerse: mean over consecutive pairs of max(0, cos): (cos 45deg + cos 45deg) / 2
    assert _consecutive_max0_cos(torch.stack([e1, diag, e2])) == pytest.approx(math.sqrt(0.5))
    # A negative cosine counts as 0, not as a negative number.
    assert _consecutive_max0_cos(torch.stack([e1, -e1])) == 0.0
    # VBench: mean over t>=1 of (max(0, cos(f_t, f_t-1)) + max(0, cos(f_t, f_0))) / 2
    # t=1: (0.7071 + 0.7071)/2; t=2: (0.7071 + 0)/2 -> mean = (0.7071 + 0.35355) / 2
    assert _first_and_previous(torch.stack([e1, diag, e2])) == pytest.approx((math.sqrt(0.5) + math.sqrt(0.5) / 2) / 2)
    with pytest.raises(NotApplicable):
        _consecutive_max0_cos(e1[None])


def test_identical_frames_give_full_temporal_consistency(models):
    frames = np.repeat(noise_video(1), 4, axis=0)
    m = build_metrics("editverse", models)
    assert m["clip_temporal_consistency"](frames, frames, ITEM) == pytest.approx(100.0, abs=1e-9)
    assert m["dino_temporal_consistency"](frames, frames, ITEM) == pytest.approx(100.0, abs=1e-9)
    ive = build_metrics("ivebench_short", models)
    assert ive["subject_consistency_score"](frames, frames, ITEM) == pytest.approx(1.0, abs=1e-12)
    assert ive["background_consistency_score"](frames, frames, ITEM) == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(NotApplicable):
        m["clip_temporal_consistency"](frames[:1], frames[:1], ITEM)


def test_temporal_consistency_uses_pooled_cls_features(models):
    frames = noise_video(3)
    clip, _ = models.get("clip_l14")
    with torch.no_grad():
        pix = torch.from_numpy(np.stack([clip_pixels(f) for f in frames]))
        cls = clip.vision_model.post_layernorm(clip.vision_model(pixel_values=pix).last_hidden_state[:, 0])
    f = torch.nn.functional.normalize(cls.double(), dim=-1)
    expected = 100 * float(((f[1:] * f[:-1]).sum(-1).clamp(min=0)).mean())
    assert build_metrics("editverse", models)["clip_temporal_consistency"](frames, frames, ITEM) == pytest.approx(expected, rel=1e-6)


def test_frame_text_alignment_is_logit_scale_times_cosine_unclamped(models):
    frames = noise_video(3)
    clip, tok = models.get("clip_l14")
    with torch.no_grad():
        ids = tok([ITEM.target_prompt], return_tensors="pt")
        t = clip.text_projection(clip.text_model(**ids).pooler_output)
        pix = torch.from_numpy(np.stack([clip_pixels(f) for f in frames]))
        i = clip.visual_projection(clip.vision_model(pixel_values=pix).pooler_output)
        cos = torch.nn.functional.cosine_similarity(i.double(), t.double())
    expected = float(clip.logit_scale.detach().exp()) * float(cos.mean())
    m = build_metrics("editverse", models)
    assert m["frame_text_alignment"](frames, frames, ITEM) == pytest.approx(expected, rel=1e-6)
    # Same model behind both keys here, and frames under 672 px: PickScore equals frame-text.
    assert m["pick_score_video_quality"](frames, frames, ITEM) == pytest.approx(expected, rel=1e-6)


def test_pickscore_takes_its_tokenizer_from_the_laion_processor_folder(models, tmp_path):
    import shutil

    clip_dir = models.paths["clip_l14"]
    weights_only = tmp_path / "PickScore_v1"  # as released: config and weights, no tokenizer
    weights_only.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(Path(clip_dir) / name, weights_only / name)
    pick = EvalModels({"pickscore": weights_only, "pickscore_processor": clip_dir}, "cpu")
    frames = noise_video(2)
    expected = build_metrics("editverse", models)["frame_text_alignment"](frames, frames, ITEM)
    assert build_metrics("editverse", pick)["pick_score_video_quality"](frames, frames, ITEM) == pytest.approx(expected, rel=1e-6)


def test_clip_temporal_and_frame_text_share_one_vision_pass_per_video(models):
    clip, _ = models.get("clip_l14")
    calls = []
    handle = clip.vision_model.register_forward_hook(lambda *a: calls.append(1))
    try:
        m = build_metrics("editverse", models)
        a, b = noise_video(3, seed=1), noise_video(3, seed=2)
        first = (m["clip_temporal_consistency"](a, a, ITEM), m["frame_text_alignment"](a, a, ITEM))
        assert len(calls) == 1
        m["frame_text_alignment"](b, b, ITEM)  # a new video: a new pass, another result
        assert len(calls) == 2
        again = (m["clip_temporal_consistency"](a.copy(), a, ITEM), m["frame_text_alignment"](a.copy(), a, ITEM))
        assert again == pytest.approx(first, rel=1e-6) and len(calls) == 4  # equal content, new array: computed again
    finally:
        handle.remove()


def test_long_prompts_are_truncated_to_77_tokens(models):
    long_item = Item("1", "s", "x", "red " * 200, "c")
    assert np.isfinite(build_metrics("editverse", models)["frame_text_alignment"](noise_video(2), None, long_item))


def test_clip_and_dinov2_preprocessing_by_hand():
    assert short_side_size(300, 448, 224) == (224, 334)  # int(224 * 448 / 300) = 334
    assert short_side_size(448, 300, 224) == (334, 224)
    assert short_side_size(224, 500, 224) == (224, 500)
    grey = np.full((300, 448, 3), 128, np.uint8)
    x = clip_pixels(grey)
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    for c in range(3):  # a flat frame stays flat through bicubic resize and crop
        assert np.allclose(x[c], (128 / 255 - CLIP_MEAN[c]) / CLIP_STD[c], atol=1e-6)
    assert dinov2_pixels(grey).shape == (3, 224, 224)
    # The crop is centred with a floor offset: a bright column at the resized frame's centre stays centred.
    frame = np.zeros((224, 335, 3), np.uint8)
    frame[:, 167] = 255  # centre column of 335 px; crop offset (335 - 224) // 2 = 55 -> column 112
    assert np.argmax(clip_pixels(frame)[0, 0]) == 112


def test_preprocessing_matches_the_reference_pipelines_bit_for_bit():
    import transformers
    from PIL import Image

    from liveditor.eval.frames import IMAGENET_MEAN, IMAGENET_STD, torchvision_clip_pixels, vbench_dino_pixels

    # transformers' PIL-backed processors (transformers 5 names them *Pil; 4.x's default classes are PIL-backed).
    clip_proc = getattr(transformers, "CLIPImageProcessorPil", transformers.CLIPImageProcessor)()
    bit = getattr(transformers, "BitImageProcessorPil", transformers.BitImageProcessor)
    dino_proc = bit(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}, image_mean=list(IMAGENET_MEAN),
                    image_std=list(IMAGENET_STD), do_convert_rgb=True)
    tv = pytest.importorskip("torchvision.transforms")
    viclip_tf = tv.Compose([tv.Resize(224, interpolation=tv.InterpolationMode.BICUBIC), tv.CenterCrop(224), tv.ToTensor(),
                            tv.Normalize(CLIP_MEAN, CLIP_STD)])
    vbench_tf = tv.Compose([tv.Resize(size=224, antialias=False), tv.ToTensor(), tv.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    rng = np.random.default_rng(0)
    for h, w in [(480, 832), (301, 449), (833, 481), (224, 224)]:
        f = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        img = Image.fromarray(f)
        assert np.array_equal(clip_pixels(f), clip_proc(images=img, return_tensors="np")["pixel_values"][0])
        assert np.array_equal(dinov2_pixels(f), dino_proc(images=img, return_tensors="np")["pixel_values"][0])
        assert np.allclose(torchvision_clip_pixels(f), viclip_tf(img).numpy(), atol=1e-6, rtol=0)
        assert np.allclose(vbench_dino_pixels(f), vbench_tf(img).numpy(), atol=1e-6, rtol=0)


def test_pickscore_shrink_truncates():
    big = np.zeros((720, 1280, 3), np.uint8)
    assert pickscore_shrink(big).shape == (378, 672, 3)  # 672/1280 * 720 = 378.0
    odd = np.zeros((1001, 700, 3), np.uint8)  # s = 672/1001: int(469.93) = 469, int(672.0) = 672
    assert pickscore_shrink(odd).shape == (672, 469, 3)
    small = np.zeros((480, 640, 3), np.uint8)
    assert pickscore_shrink(small) is small


def test_frame_sampling_rules():
    assert viclip_frame_indices(81) == [0, 10, 20, 30, 40, 50, 60, 70]
    assert viclip_frame_indices(5) == [0, 0, 1, 1, 2, 3, 3, 4]
    assert judge_frame_indices(81) == [0, 27, 54]  # T divisible by 3: three frames
    assert judge_frame_indices(82) == [0, 27, 54, 81]  # EditVerse's quirk: four
    assert judge_frame_indices(2) == [0, 1]


def test_viclip_loads_the_release_layout_and_scores_100_cos(models, tmp_path):
    model = models.get("viclip")
    assert set(torch.load(models.paths["viclip"], weights_only=True)["model"]) == set(model.state_dict())
    frames = noise_video(12, 64, 96)
    value = build_metrics("editverse", models)["video_text_alignment"](frames, frames, ITEM)
    from liveditor.eval.frames import torchvision_clip_pixels

    video = torch.from_numpy(np.stack([torchvision_clip_pixels(frames[i]) for i in viclip_frame_indices(12)]))[None]
    with torch.no_grad():
        v = model.vision_encoder(video)
        t = model.text_encoder(model.tokenize([ITEM.target_prompt]))
    assert value == pytest.approx(100 * float(torch.nn.functional.cosine_similarity(v, t)), rel=1e-5)
    assert -100 <= value <= 100
    ids = model.tokenize(["word " * 100])
    assert ids.shape == (1, 32) and ids[0, -1] == 49407  # truncated with end-of-text last
    with pytest.raises(FileNotFoundError, match="ViClip-InternVid-10M-FLT.pth"):
        load_viclip(tmp_path / "missing.pth")


def test_unset_model_is_not_computed_and_missing_path_is_an_error(tmp_path):
    m = build_metrics("editverse", EvalModels({}, "cpu"))
    with pytest.raises(NotComputed, match="models.clip_l14"):
        m["frame_text_alignment"](noise_video(2), None, ITEM)
    with pytest.raises(NotComputed, match="judge"):
        m["editing_vlm_evaluation"](noise_video(2), noise_video(2), ITEM)
    bad = build_metrics("editverse", EvalModels({"dinov2": str(tmp_path / "nope")}, "cpu"))
    with pytest.raises(FileNotFoundError, match="models.dinov2"):
        bad["dino_temporal_consistency"](noise_video(2), None, ITEM)


def squares(count, size=64):
    f = np.zeros((size, size, 3), np.uint8)
    for k in range(count):
        f[4 + 14 * k: 12 + 14 * k, 4:12] = 255
    return f


def count_blobs(frame, phrase):
    """A stand-in detector: bright squares in a column (one per 14 rows)."""
    rows = frame[:, 8, 0] > 0
    return int(np.sum(rows[1:] & ~rows[:-1]) + rows[0])


def test_quantity_accuracy_fraction_of_frames_with_the_right_count():
    item = Item("q", "s", "make it three apples", "three apples", "quantity", subcategory="quantity editing",
                fields={"target_phrase": "three apples"})
    assert expected_quantity(item) == ("apples", 3)
    video = np.stack([squares(3)] * 6 + [squares(2)] * 2)  # 8 frames, sampled at 0..7: 6 of 8 right
    assert quantity_accuracy_score(video, video, item, count_objects=count_blobs) == pytest.approx(0.75)
    explicit = Item("r", "s", "x", "y", "c", fields={"target_quantity": {"phrase": "cat", "count": 2}})
    assert expected_quantity(explicit) == ("cat", 2)
    with pytest.raises(NotApplicable):
        quantity_accuracy_score(video, video, ITEM, count_objects=count_blobs)


def test_quantity_accuracy_through_transformers_grounding_dino(tmp_path):
    from liveditor.eval.tiny import make_grounding_dino_dir

    models = EvalModels({"grounding_dino": make_grounding_dino_dir(tmp_path / "gd", num_queries=10)}, "cpu")
    video = noise_video(4, 48, 64)
    three = Item("q", "s", "x", "y", "Quantity", fields={"target_quantity": "three cats"})
    ten = Item("q", "s", "x", "y", "Quantity", fields={"target_quantity": {"phrase": "cats", "count": 10}})
    # Thresholds 0: every one of the 10 queries is a box, in every frame; above 1: none.
    everything = build_metrics("ivebench_short", models, box_threshold=0.0, text_threshold=0.0)["quantity_accuracy_score"]
    assert everything(video, video, ten) == 1.0 and everything(video, video, three) == 0.0
    nothing = build_metrics("ivebench_short", models, box_threshold=1.01)["quantity_accuracy_score"]
    assert nothing(video, video, ten) == 0.0


def test_judge_answers_parse_or_are_rejected():
    assert parse_total_score("Prompt Following: 3 - ok\nEdit Quality: 2\nBackground Consistency: 3\nTotal Score: 8", 0, 9) == 8
    assert parse_total_score("**Total Score:** 7", 0, 9) == 7
    assert parse_total_score("6", 0, 9) == 6
    assert parse_total_score("Total Score: 12", 0, 9) is None
    assert parse_total_score("I cannot rate this.", 0, 9) is None
    assert parse_total_score("Score: 4 - fine", 1, 5, "Score") == 4


def test_ivebench_dimensions_rescale_and_weights():
    cells = {"subject_consistency_score": Cell(0.9), "background_consistency_score": Cell(0.8),
             "temporal_flickering_score": Cell(0.7), "motion_smoothness_score": Cell(0.6), "vtss_score": Cell(0.04),
             "overall_semantic_consistency_score": Cell(0.2), "phrase_semantic_consistency_score": Cell(0.3),
             "instruction_satisfaction_score": Cell(4.0), "quantity_accuracy_score": Cell(0.5),
             "semantic_fidelity_score": Cell(0.9), "motion_fidelity_score": Cell(0.8), "content_fidelity_score": Cell(2.0)}
    d = _ive_dimensions(cells)
    vtss = (0.04 + 0.05) / 0.15  # [-0.05, 0.1] -> [0, 1]: 0.6
    assert d["quality"].value == pytest.approx((0.9 + 0.8 + 0.7 + 0.6 + 4 * vtss) / 8)
    assert d["compliance"].value == pytest.approx((0.2 + 0.3 + 3 * 0.75 + 0.5) / 6)  # IS 4 -> 0.75
    assert d["fidelity"].value == pytest.approx((0.9 + 0.8 + 3 * 0.25) / 5)  # CF 2 -> 0.25
    assert d["total"].value == pytest.approx((d["quality"].value + d["compliance"].value + d["fidelity"].value) / 3)
    assert all(c.note == "" for c in d.values())
    cells["motion_smoothness_score"] = Cell(None, "not computed: needs AMT-G")
    d = _ive_dimensions(cells)
    assert d["quality"].value == pytest.approx((0.9 + 0.8 + 0.7 + 4 * vtss) / 7)
    assert d["quality"].note == "partial (without MS)" and d["total"].partial
