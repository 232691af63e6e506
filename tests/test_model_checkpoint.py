"""Loading Video-XL-layout checkpoint folders made by the tests; clear errors for broken ones."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from model import load_model
from model.checkpoint import CheckpointError


def _frames(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 336, 336, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def saved(tiny_vx, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt") / "Video_XL_tiny"
    tiny_vx.save_pretrained(folder, max_shard_bytes=200_000)
    return folder


def test_saved_folder_has_video_xl_layout(saved):
    index = json.loads((saved / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) >= 3  # sharded
    keys = set(index["weight_map"])
    assert "model.layers.0.self_attn.beacon_q_proj.weight" in keys
    assert "model.beacon_embed_tokens.weight" in keys
    assert "model.mm_projector.0.weight" in keys and "model.mm_projector.2.bias" in keys
    assert any(k.startswith("model.vision_tower.vision_tower.vision_model.encoder.layers.") for k in keys)
    cfg = json.loads((saved / "config.json").read_text())
    assert cfg["model_type"] == "qwen2" and cfg["mm_vision_tower"] == "clip_config"  # as the original writes it
    assert (saved / "clip_config" / "config.json").is_file()
    assert (saved / "tokenizer.json").is_file()


def test_round_trip_gives_identical_outputs(tiny_vx, saved):
    vx = load_model(saved, device="cpu")
    for (k, a), (k2, b) in zip(sorted(tiny_vx.model.state_dict().items()), sorted(vx.model.state_dict().items()),
                               strict=True):
        assert k == k2 and torch.equal(a, b), k
    frames = _frames(12, seed=1)
    m1 = tiny_vx.encode(frames, tiny_vx.plan(frames))
    m2 = vx.encode(frames, vx.plan(frames))
    assert m1.kv().equal(m2.kv())
    q = "What happens?"
    assert tiny_vx.answer(m1, q, max_new_tokens=5).token_ids == vx.answer(m2, q, max_new_tokens=5).token_ids
    assert vx._sink_ids == tiny_vx._sink_ids


def _copy(saved, tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(saved, dst)
    return dst


def _edit_tensor(folder, key, fn):
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shard = folder / index["weight_map"][key]
    state = load_file(str(shard))
    fn(state)
    save_file(state, str(shard))
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if k in state or v != shard.name}
    for k in state:
        index["weight_map"][k] = shard.name
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


def test_wrong_shape_is_named(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    key = "model.layers.1.mlp.up_proj.weight"
    _edit_tensor(folder, key, lambda s: s.__setitem__(key, torch.zeros(3, 3)))
    with pytest.raises(CheckpointError, match=r"mis-shaped 1: \['model\.layers\.1\.mlp\.up_proj\.weight: checkpoint \(3, 3\)"):
        load_model(folder, device="cpu")


def test_missing_and_unexpected_keys_are_named(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    key = "model.norm.weight"

    def edit(s):
        s["model.extra.weight"] = s.pop(key)

    _edit_tensor(folder, key, edit)
    with pytest.raises(CheckpointError) as err:
        load_model(folder, device="cpu")
    assert "missing 1: ['model.norm.weight']" in str(err.value)
    assert "unexpected 1: ['model.extra.weight']" in str(err.value)


def test_missing_beacon_parts_are_initialised_like_video_xl(tiny_vx, saved, tmp_path):
    folder = _copy(saved, tmp_path)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    for shard in sorted(set(index["weight_map"].values())):
        state = load_file(str(folder / shard))
        keep = {k: v for k, v in state.items() if "beacon" not in k}
        save_file(keep, str(folder / shard))
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if "beacon" not in k}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    vx = load_model(folder, device="cpu")
    attn = vx.model.model.layers[1].self_attn
    assert torch.equal(attn.beacon_q_proj.weight, attn.q_proj.weight)
    assert torch.equal(attn.beacon_v_proj.bias, attn.v_proj.bias)
    eos = vx.config.eos_token_id
    assert torch.equal(vx.model.model.beacon_embed_tokens.weight[0], vx.model.model.embed_tokens.weight[eos])
    assert vx.fingerprint != tiny_vx.fingerprint


def test_known_vision_tower_name_and_missing_tokenizer(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["mm_vision_tower"] = "openai/clip-vit-large-patch14-336"
    (folder / "config.json").write_text(json.dumps(cfg))
    # the built-in ViT-L/14-336 architecture does not fit the tiny tower's weights: a shape error, by name
    with pytest.raises(CheckpointError, match="vision_tower"):
        load_model(folder, device="cpu")
    cfg["mm_vision_tower"] = "no/such-tower"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="no/such-tower"):
        load_model(folder, device="cpu")
    cfg["mm_vision_tower"] = "clip_config"
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "tokenizer.json").unlink()
    (folder / "vocab.json").unlink(missing_ok=True)
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        load_model(folder, device="cpu")


def test_fingerprint_tracks_dtype_and_weights(tiny_vx, saved):
    assert load_model("tiny", device="cpu").fingerprint == tiny_vx.fingerprint
    assert load_model("tiny", device="cpu", dtype="bfloat16").fingerprint != tiny_vx.fingerprint
    assert len(tiny_vx.fingerprint) == 64
