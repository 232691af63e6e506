"""Checkpoints in Video-XL's layout (issue 12): `save_pretrained` writes the files and config.json keys
the original Video-XL code writes, and `load_model` reads the folder back to the same model.

Reference: `tests/data/oracle/checkpoint`, written by the original code (transformers 4.39). The
`tiny` model has the oracle's widths, so its config.json must equal the oracle's in every value but
`transformers_version`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from model import load_model
from model.checkpoint import is_qwen2_structured, save_checkpoint, save_tokenizer_files
from model.config import load_config
from model.tokenizer import PROMPT_TEMPLATE, load_tokenizer

pytestmark = pytest.mark.timeout(120)

ORACLE = Path(__file__).parent / "data" / "oracle" / "checkpoint"
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json",
                   "special_tokens_map.json", "added_tokens.json")
# Texts the slow (vocab.json + merges.txt) and fast tokenizers must agree on: Video-XL's prompt,
# multi-turn ChatML, non-ASCII (NFC) text.
TEXTS = (
    PROMPT_TEMPLATE.format(question="What happens first? Describe the red circle."),
    "<|im_start|>user\nWhich color appears before the cut?<|im_end|>\n<|im_start|>assistant\nBlue.<|im_end|>\n"
    "<|endoftext|>",
    "café naïve Zürich — 東京の映像 😀 ÅÉÎ, Ελληνικά, русский",
)
# Texts where Qwen2's pre-tokenizer (single digits, NFC) differs from GPT-2's byte-level regex.
DIGITS_AND_NFD = ("0123456789 frames, 12 apples in 2024-01-05", "e\u0301te\u0301 at 10:45")
EXTRA = {
    "beacon_ratio": [2, 4, 8],
    "beacon_ratio_mix": "step-random",
    "vxl_training": {"steps": 300, "seed": 0, "curriculum": [{"until_step": 100, "beacon_ratio": [2]}]},
}


def _json(path: Path):
    return json.loads(path.read_text())


def _ids(tok, text):
    return list(tok(text, add_special_tokens=False).input_ids)


@pytest.fixture(scope="module")
def saved(tiny_vx, tmp_path_factory):
    folder = tmp_path_factory.mktemp("layout") / "Video_XL_tiny"
    tiny_vx.save_pretrained(folder)
    return folder


def _slow_tokenizer(saved: Path, tmp: Path):
    """`Qwen2Tokenizer` from the slow files alone (no tokenizer.json), as the original's `use_fast=False`.

    transformers 5 has no slow Qwen2 tokenizer: `Qwen2Tokenizer` is the `tokenizers`-backed class,
    built here from vocab.json + merges.txt with Qwen2's normaliser and pre-tokenizer.
    """
    from transformers import Qwen2Tokenizer

    slow_dir = tmp / "slow"
    slow_dir.mkdir()
    for name in TOKENIZER_FILES:
        if name != "tokenizer.json":
            shutil.copy(saved / name, slow_dir / name)
    return Qwen2Tokenizer.from_pretrained(str(slow_dir), local_files_only=True)


def test_config_has_the_original_keys_and_values(saved):
    cfg, oracle = _json(saved / "config.json"), _json(ORACLE / "config.json")
    missing = sorted(set(oracle) - set(cfg))
    assert not missing, f"config.json lacks the original's keys {missing}"
    differ = sorted(k for k in oracle if cfg[k] != oracle[k])
    assert differ == ["transformers_version"], {k: (cfg[k], oracle[k]) for k in differ}
    assert cfg["transformers_version"] == transformers.__version__
    assert "rope_parameters" not in cfg and "dtype" not in cfg  # transformers 5 spellings
    assert cfg["rope_theta"] == 1e6 and cfg["rope_scaling"] is None
    assert cfg["model_type"] == "qwen2" and cfg["architectures"] == ["LlavaQwenForCausalLM"]
    generic = set(transformers.PretrainedConfig().to_dict()) - set(oracle)  # id2label, return_dict, ...
    assert not set(cfg) & generic, f"transformers 5 defaults the original does not write: {sorted(set(cfg) & generic)}"
    for sub in ("config.json", "preprocessor_config.json"):
        got, want = _json(saved / "clip_config" / sub), _json(ORACLE / "clip_config" / sub)
        assert sorted(got) == sorted(want), sub
        assert {k for k in want if got[k] != want[k]} <= {"transformers_version"}, sub
    gen, gen_oracle = _json(saved / "generation_config.json"), _json(ORACLE / "generation_config.json")
    assert sorted(gen) == sorted(gen_oracle)
    assert {k: v for k, v in gen.items() if k != "transformers_version"} == {
        k: v for k, v in gen_oracle.items() if k != "transformers_version"}


def test_architectural_values_are_the_models(tiny_vx, saved):
    cfg, c = _json(saved / "config.json"), tiny_vx.config
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings",
            "hidden_act", "bos_token_id", "eos_token_id", "beacon_window", "beacon_stride", "beacon_ratio",
            "beacon_param", "beacon_pos", "beacon_attn", "beacon_sink_size", "beacon_embed_init",
            "mm_hidden_size", "mm_projector_type", "mm_vision_select_layer", "mm_vision_select_feature",
            "mm_spatial_pool_stride", "mm_spatial_pool_mode", "use_sliding_window", "max_window_layers")
    assert {k: cfg[k] for k in keys} == {k: getattr(c, k) for k in keys}
    assert cfg["rope_theta"] == c.rope_parameters["rope_theta"]
    assert cfg["torch_dtype"] == str(tiny_vx.dtype).removeprefix("torch.")
    clip = _json(saved / "clip_config" / "config.json")
    assert {k: clip[k] for k in c.vision_config} == c.vision_config
    pre = _json(saved / "clip_config" / "preprocessor_config.json")
    assert {k: pre[k] for k in c.image_processor} == c.image_processor


def test_tokenizer_files_are_the_originals(tiny_vx, saved):
    top = {p.name for p in ORACLE.iterdir() if not p.name.endswith(".safetensors")}
    assert top <= {p.name for p in saved.iterdir()}, sorted(top - {p.name for p in saved.iterdir()})
    for name in ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"):
        got, want = _json(saved / name), _json(ORACLE / name)
        assert sorted(got) == sorted(want), name
        # same special tokens at the same ids; tokenizer_class depends on the pre-tokenizer (see below)
        assert {k: v for k, v in got.items() if k != "tokenizer_class"} == {
            k: v for k, v in want.items() if k != "tokenizer_class"}, name
    model = json.loads(tiny_vx.tokenizer.backend_tokenizer.to_str())["model"]
    assert _json(saved / "vocab.json") == model["vocab"]
    lines = (saved / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "#version: 0.2"
    assert lines[1:] == [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]


def test_slow_tokenizer_from_vocab_and_merges_gives_the_fast_ids(tiny_vx, saved, tmp_path):
    slow = _slow_tokenizer(saved, tmp_path)
    assert slow.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [512, 513, 514]
    for text in TEXTS:
        assert _ids(slow, text) == _ids(tiny_vx.tokenizer, text), text
    # tokenizer_class is Qwen2Tokenizer exactly when that class reproduces the tokenizer (the tiny
    # one keeps GPT-2's regex, which joins digit runs, so it is written as PreTrainedTokenizerFast)
    agree = all(_ids(slow, t) == _ids(tiny_vx.tokenizer, t) for t in DIGITS_AND_NFD)
    cls = _json(saved / "tokenizer_config.json")["tokenizer_class"]
    assert cls == ("Qwen2Tokenizer" if agree else "PreTrainedTokenizerFast")
    assert agree == is_qwen2_structured(tiny_vx.tokenizer)


def test_qwen2_structured_tokenizer_is_written_as_qwen2tokenizer(tiny_vx, tmp_path):
    """A tokenizer with Qwen2's normaliser and pre-tokenizer (as real Video-XL ones): the slow
    class from vocab.json + merges.txt gives its ids on every text, digits and NFD included."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast, Qwen2Tokenizer

    qwen = json.loads(Qwen2Tokenizer().backend_tokenizer.to_str())
    tj = json.loads(tiny_vx.tokenizer.backend_tokenizer.to_str())
    tj["normalizer"], tj["pre_tokenizer"] = qwen["normalizer"], qwen["pre_tokenizer"]
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(tj)), eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>", additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    folder = tmp_path / "tok"
    folder.mkdir()
    save_tokenizer_files(tok, folder, 32768)
    assert _json(folder / "tokenizer_config.json")["tokenizer_class"] == "Qwen2Tokenizer"
    slow = _slow_tokenizer(folder, tmp_path)
    for text in TEXTS + DIGITS_AND_NFD:
        assert _ids(slow, text) == _ids(tok, text), text
        assert _ids(load_tokenizer(folder), text) == _ids(tok, text), text


def test_load_model_reproduces_the_saved_model_exactly(tiny_vx, saved):
    vx = load_model(saved, device="cpu")
    assert vx.fingerprint == tiny_vx.fingerprint
    for text in TEXTS + DIGITS_AND_NFD:  # the folder tokenizes as the saved model did
        assert _ids(vx.tokenizer, text) == _ids(tiny_vx.tokenizer, text), text
    frames = np.random.default_rng(3).integers(0, 256, (4, 336, 336, 3), dtype=np.uint8)
    memory = tiny_vx.encode(frames, tiny_vx.plan(frames, ratio=8))
    for question in ("What happens first?", "How many circles: 12 or 2024?"):
        a, b = tiny_vx.next_token_logits(memory, question), vx.next_token_logits(memory, question)
        assert a.shape == (tiny_vx.config.vocab_size,) and torch.equal(a, b), question


def test_extra_config_lands_in_config_json_and_survives_load_config(tiny_vx, tmp_path):
    folder = tiny_vx.save_pretrained(tmp_path / "ckpt", extra_config=EXTRA)
    cfg = _json(folder / "config.json")
    assert {k: cfg[k] for k in EXTRA} == EXTRA
    assert "rope_parameters" not in cfg and cfg["rope_theta"] == 1e6
    loaded = load_config(folder)
    assert {k: getattr(loaded, k) for k in EXTRA} == EXTRA
    assert loaded.rope_parameters["rope_theta"] == 1e6 and loaded.hidden_size == tiny_vx.config.hidden_size
    with pytest.raises(ValueError, match="hidden_size"):
        save_checkpoint(tiny_vx.model, tiny_vx.tokenizer, tmp_path / "bad", extra_config={"hidden_size": 128})
    with pytest.raises(ValueError, match="rope_parameters"):
        save_checkpoint(tiny_vx.model, tiny_vx.tokenizer, tmp_path / "bad",
                        extra_config={"rope_parameters": {"rope_theta": 1e4}})


def test_resaving_the_oracle_reproduces_its_files(tmp_path):
    """The original's checkpoint, loaded and saved again: the same json files (but for
    `transformers_version`), the same vocab.json and merges.txt bytes, the same model."""
    vx = load_model(ORACLE, device="cpu")
    folder = vx.save_pretrained(tmp_path / "again")
    for name in ("config.json", "generation_config.json", "clip_config/config.json",
                 "clip_config/preprocessor_config.json") + TOKENIZER_FILES[3:]:
        got, want = _json(folder / name), _json(ORACLE / name)
        assert sorted(got) == sorted(want), name
        assert {k for k in want if got[k] != want[k]} <= {"transformers_version"}, name
    for name in ("vocab.json", "merges.txt"):
        assert (folder / name).read_bytes() == (ORACLE / name).read_bytes(), name
    assert load_model(folder, device="cpu").fingerprint == vx.fingerprint
