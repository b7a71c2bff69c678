"""The one weight loader: every layout saved from a tiny random model loads back to identical outputs;
strict by default, with errors that list what does not match."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from liveditor.isa import ISAConfig
from liveditor.models import CheckpointError, DiTConfig, EditorDiT, build_editor, detect_layout, load_editor_weights, save_editor_weights
from liveditor.pipeline.tiny import randomize_

CFG = DiTConfig(dim=64, ffn_dim=128, num_heads=4, num_layers=2, freq_dim=32, text_len=16, text_dim=24,
                isa=ISAConfig(block_size=16, context_keep_ratio=0.5, full_query_ratio=0.5, exact_kv_ratio=0.25))


@pytest.fixture(scope="module")
def source_model():
    return randomize_(EditorDiT(CFG), seed=3).eval()


def forward(model):
    g = torch.Generator().manual_seed(0)
    latents, source = torch.randn(1, 16, 2, 8, 8, generator=g), torch.randn(1, 16, 2, 8, 8, generator=g)
    with torch.no_grad():
        return model(latents, torch.tensor([321.0]), torch.randn(1, 5, 24, generator=g), source)


@pytest.mark.parametrize("layout,shard", [("liveditor", None), ("wan", None), ("wan", 40_000), ("diffusers", None), ("diffusers", 40_000), ("liveditor", 40_000)])
def test_each_layout_loads_back_to_identical_outputs(tmp_path, source_model, layout, shard):
    target = tmp_path / ("ckpt" if shard else "ckpt.safetensors")
    files = save_editor_weights(source_model, target, layout=layout, max_shard_bytes=shard)
    if shard:
        assert len(files) > 2 and files[-1].name.endswith(".index.json")
    path = files[-1] if shard else target  # the index JSON for shards
    model, report = build_editor(CFG, path)
    assert report.layout == layout
    if layout == "liveditor":
        assert torch.equal(forward(model), forward(source_model))
    else:
        # Wan and diffusers checkpoints lack the editor's parameters: source embedding from the
        # target's, gates closed; every Wan parameter is the saved one.
        assert report.initialised
        assert torch.equal(model.source_video_embedding_more_memory.weight, model.patch_embedding.weight)
        assert all(b.self_attn.alpha_1.weight.abs().sum() == 0 for b in model.blocks)
        reference = randomize_(EditorDiT(CFG), seed=3).eval()
        reference.init_editor_parameters()
        assert torch.equal(forward(model), forward(reference))


def test_folder_with_index_and_diffusers_pipeline_folder(tmp_path, source_model):
    save_editor_weights(source_model, tmp_path / "pipe" / "transformer", layout="diffusers", max_shard_bytes=40_000)
    model, report = build_editor(CFG, tmp_path / "pipe")  # looks into transformer/
    assert report.layout == "diffusers" and len(report.files) > 1


def test_original_wan_release_folder(tmp_path, source_model):
    # Wan2.1-T2V-1.3B ships the DiT beside the T5 and VAE weights.
    save_editor_weights(source_model, tmp_path / "diffusion_pytorch_model.safetensors", layout="wan")
    torch.save({"encoder.weight": torch.zeros(2)}, tmp_path / "models_t5_umt5-xxl-enc-bf16.pth")
    torch.save({"decoder.weight": torch.zeros(2)}, tmp_path / "Wan2.1_VAE.pth")
    model, report = build_editor(CFG, tmp_path)
    assert report.layout == "wan" and report.files == [str(tmp_path / "diffusion_pytorch_model.safetensors")]


def test_wrapped_torch_checkpoint_with_prefix(tmp_path, source_model):
    state = {f"module.{k}": v for k, v in source_model.state_dict().items()}
    torch.save({"state_dict": state, "step": 10}, tmp_path / "train.pt")
    model, report = build_editor(CFG, tmp_path / "train.pt")
    assert report.layout == "liveditor"
    assert torch.equal(forward(model), forward(source_model))


def test_missing_and_unexpected_keys_are_listed(tmp_path, source_model):
    path = tmp_path / "ckpt.safetensors"
    save_editor_weights(source_model, path)
    state = load_file(str(path))
    del state["blocks.1.ffn.2.weight"]
    state["blocks.7.self_attn.q.weight"] = torch.zeros(3)
    save_file(state, str(path))
    with pytest.raises(CheckpointError) as err:
        build_editor(CFG, path)
    msg = str(err.value)
    assert "missing keys (1): blocks.1.ffn.2.weight" in msg
    assert "unexpected keys (1): blocks.7.self_attn.q.weight" in msg
    # Not strict: the rest loads, the missing tensor keeps its initial value.
    model, _ = build_editor(CFG, path, strict=False)
    assert torch.equal(model.blocks[0].ffn[2].weight, source_model.blocks[0].ffn[2].weight)


def test_partial_editor_keys_are_missing_keys(tmp_path, source_model):
    state = {k: v.contiguous() for k, v in source_model.state_dict().items() if "cross_attn.alpha" not in k}
    save_file(state, str(tmp_path / "c.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing keys \(4\).*cross_attn.alpha_1"):
        build_editor(CFG, tmp_path / "c.safetensors")


def test_wrong_size_names_the_tensors(tmp_path, source_model):
    save_editor_weights(source_model, tmp_path / "c.safetensors")
    with pytest.raises(CheckpointError, match=r"patch_embedding.weight: checkpoint \(64, 16, 1, 2, 2\) vs model \(96, 16, 1, 2, 2\)"):
        build_editor(CFG.replace(dim=96, num_heads=4), tmp_path / "c.safetensors")


def test_bad_paths_are_named(tmp_path, source_model):
    with pytest.raises(CheckpointError, match="does not exist"):
        build_editor(CFG, tmp_path / "nope.safetensors")
    files = save_editor_weights(source_model, tmp_path / "sharded", max_shard_bytes=40_000)
    index = json.loads(files[-1].read_text())
    files[0].unlink()
    with pytest.raises(CheckpointError, match="names shards that do not exist"):
        build_editor(CFG, files[-1])
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="has no weight file"):
        build_editor(CFG, tmp_path / "empty")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="could not be read"):
        build_editor(CFG, tmp_path / "junk.safetensors")
    assert index["weight_map"]


def test_layout_detection_from_real_key_names():
    assert detect_layout({"patch_embedding.weight": 0, "blocks.0.self_attn.q.weight": 0, "head.head.weight": 0}) == "wan"
    assert detect_layout({"patch_embedding.weight": 0, "source_video_embedding_more_memory.weight": 0}) == "liveditor"
    assert detect_layout({"condition_embedder.time_proj.weight": 0, "blocks.0.attn1.to_q.weight": 0}) == "diffusers"
