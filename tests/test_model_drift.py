"""Upstream drift fails loudly (issue 10): the invariants where vxl relies on transformers internals,
the cache accepted under both names, and the explicit fingerprint.

References: the oracle (memory and logits of the original Video-XL code) for the two cache names;
transformers' own `Qwen2Attention` signature for the keyword the decoder uses.
"""

from __future__ import annotations

import json
import shutil
from importlib import metadata

import numpy as np
import pytest
import torch
from transformers import DynamicCache

from model import load_model
from model.environment import UpstreamDriftError
from model.modeling import CACHE_KWARG, VSTAttention

pytestmark = [pytest.mark.fidelity, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def oracle_vx(oracle_dir):
    return load_model(oracle_dir / "checkpoint", device="cpu")


def _frames(oracle_dir, name="f12_r8"):
    return np.load(oracle_dir / "cases" / name / "frames.npy")


def test_cache_kwarg_is_the_one_the_installed_decoder_uses():
    import inspect

    from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer

    assert CACHE_KWARG in inspect.signature(Qwen2DecoderLayer.forward).parameters


def test_attention_accepts_the_cache_under_either_name(oracle_vx):
    """Same output and same cache growth whether the cache comes as `past_key_values` or `cache`."""
    attn: VSTAttention = oracle_vx.model.model.layers[0].self_attn
    cfg = oracle_vx.config
    torch.manual_seed(0)
    h = torch.randn(1, 5, cfg.hidden_size)
    pos = torch.arange(3, 8).unsqueeze(0)
    cos_sin = oracle_vx.model.model.rotary_emb(h, pos)
    kv = torch.randn(cfg.num_hidden_layers, 2, cfg.num_key_value_heads, 3, cfg.head_dim_)  # (L, 2, Hkv, 3, D)
    outs = []
    for name in ("past_key_values", "cache"):
        cache = DynamicCache(config=cfg)
        for layer in range(cfg.num_hidden_layers):
            cache.update(kv[layer, 0].unsqueeze(0), kv[layer, 1].unsqueeze(0), layer)
        with torch.no_grad():
            out, _ = attn(h, cos_sin, None, **{name: cache})
        assert cache.get_seq_length(0) == 8
        outs.append(out)
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


def test_attention_refuses_state_it_would_ignore(oracle_vx):
    attn = oracle_vx.model.model.layers[0].self_attn
    cfg = oracle_vx.config
    h = torch.randn(1, 2, cfg.hidden_size)
    cos_sin = oracle_vx.model.model.rotary_emb(h, torch.arange(2).unsqueeze(0))
    with pytest.raises(UpstreamDriftError, match=r"transformers \S+: .*`layer_past=`"):
        attn(h, cos_sin, None, layer_past=DynamicCache(config=cfg))
    with pytest.raises(UpstreamDriftError, match="two different caches"):
        attn(h, cos_sin, None, past_key_values=DynamicCache(config=cfg), cache=DynamicCache(config=cfg))


def test_attention_ignoring_the_cache_is_a_loud_error(oracle_vx, oracle_dir, monkeypatch):
    """The transformers 5.24 failure, simulated: the attention never sees the cache. The oracle case
    has one window after the sink, so without the invariant it would silently store a wrong memory."""
    original = VSTAttention.forward

    def ignores_cache(self, *args, **kwargs):
        kwargs.pop("cache", None)
        kwargs.pop("past_key_values", None)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(VSTAttention, "forward", ignores_cache)
    frames = _frames(oracle_dir, "f4_r8")
    version = metadata.version("transformers")
    with pytest.raises(UpstreamDriftError, match=rf"^transformers {version}: a decoder pass fed \d+ tokens"):
        oracle_vx.encode(frames, oracle_vx.plan(frames, ratio=8))


def test_capture_missing_a_layer_is_a_loud_error(oracle_vx, oracle_dir, monkeypatch):
    original = VSTAttention.forward

    def drops_capture_on_last_layer(self, *args, **kwargs):
        if self.layer_idx == oracle_vx.config.num_hidden_layers - 1:
            kwargs["vst_capture"] = None
        return original(self, *args, **kwargs)

    monkeypatch.setattr(VSTAttention, "forward", drops_capture_on_last_layer)
    frames = _frames(oracle_dir, "f4_r8")
    with pytest.raises(UpstreamDriftError, match="capture recorded layers"):
        oracle_vx.encode(frames, oracle_vx.plan(frames, ratio=8))


# -- the fingerprint: an explicit list ------------------------------------------------------------


def _checkpoint_copy(oracle_dir, tmp_path, edit):
    folder = tmp_path / "ckpt"
    shutil.copytree(oracle_dir / "checkpoint", folder)
    cfg = json.loads((folder / "config.json").read_text())
    edit(cfg)
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def test_fingerprint_ignores_keys_that_do_not_change_a_memory(oracle_vx, oracle_dir, tmp_path):
    def harmless(cfg):
        cfg["an_upstream_default_added_in_5_99"] = {"x": 1}
        cfg["output_attentions"] = True
        cfg["initializer_range"] = 0.5
        cfg["beacon_ratio"] = [2, 4, 8, 12, 16]  # allowed ratios: the ratio used is in each stored plan
        cfg["transformers_version"] = "9.9.9"

    vx = load_model(_checkpoint_copy(oracle_dir, tmp_path, harmless), device="cpu")
    assert vx.fingerprint == oracle_vx.fingerprint


@pytest.mark.parametrize("key,value", [("rms_norm_eps", 1e-5), ("rope_theta", 10000.0), ("eos_token_id", 3),
                                       ("mm_vision_select_layer", -1)])
def test_fingerprint_changes_with_a_listed_key(oracle_vx, oracle_dir, tmp_path, key, value):
    def change(cfg):
        if key == "rope_theta" and "rope_parameters" in cfg:
            cfg["rope_parameters"]["rope_theta"] = value
        cfg[key] = value

    vx = load_model(_checkpoint_copy(oracle_dir, tmp_path, change), device="cpu")
    assert vx.fingerprint != oracle_vx.fingerprint
    assert vx.fingerprint_payload()["config"] != oracle_vx.fingerprint_payload()["config"]


def test_fingerprint_changes_with_dtype_and_vocabulary(oracle_vx, oracle_dir, tmp_path):
    assert load_model(oracle_dir / "checkpoint", device="cpu", dtype="bfloat16").fingerprint != oracle_vx.fingerprint
    folder = _checkpoint_copy(oracle_dir, tmp_path, lambda cfg: None)
    tok = json.loads((folder / "tokenizer.json").read_text())
    merges = tok["model"]["merges"]
    merges[0], merges[1] = merges[1], merges[0]  # merge priority changes tokenization
    (folder / "tokenizer.json").write_text(json.dumps(tok))
    for extra in ("merges.txt", "vocab.json"):  # a slow-tokenizer copy would win otherwise
        (folder / extra).unlink(missing_ok=True)
    vx = load_model(folder, device="cpu")
    assert vx.fingerprint_payload()["tokenizer"]["merges"] != oracle_vx.fingerprint_payload()["tokenizer"]["merges"]
    assert vx.fingerprint != oracle_vx.fingerprint
