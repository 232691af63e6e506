"""Captioner and extractor back ends: registries, LLM answer parsing, hf-llm on a tiny random
causal LM, openai-compatible against a real local HTTP server, videoxl on the tiny model, hf-vlm
loading errors and frame sampling."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from vico_synth.captioners import CAPTIONERS, CaptionerError, HFVLMCaptioner, VideoXLCaptioner, make_captioner
from vico_synth.clips import Clip, ClipInput, clip_spans
from vico_synth.extractors import (
    EXTRACTORS,
    CaptionedClip,
    ExtractorError,
    HFLLMExtractor,
    build_prompt,
    clues_from_llm,
    make_extractor,
    parse_clue_lines,
)


def _captions(texts: list[str], clip_s: float = 14.0) -> list[CaptionedClip]:
    return [CaptionedClip(Clip(i, i * clip_s, (i + 1) * clip_s, i, i + 1), t) for i, t in enumerate(texts)]


CAPS = _captions([
    "A man in a red coat walks into a bar.",
    "The bartender pours him a glass of whiskey.",
    "",
    "A fight breaks out near the pool table.",
    "Police cars arrive outside with sirens on.",
    "The man escapes through the back door.",
])


def test_registries():
    assert set(CAPTIONERS) == {"videoxl", "hf-vlm", "annotations", "ground-truth"}
    assert set(EXTRACTORS) == {"hf-llm", "openai-compatible", "heuristic"}
    with pytest.raises(ValueError, match="known"):
        make_captioner("vila")
    with pytest.raises(ValueError, match="bad options"):
        make_extractor("heuristic", {"nope": 1})


def test_heuristic_removes_near_duplicates():
    caps = _captions(["A dog runs.", "A dog runs!", "a  dog runs.", "A cat sleeps on the sofa.", ""])
    clues = make_extractor("heuristic").extract(caps, 2)
    assert [(c.text, c.clip_index) for c in clues] == [("A dog runs.", 0), ("A cat sleeps on the sofa.", 3)]


CANNED = [
    ("1. [clip 0] A man in a red coat walks into a bar\n2. [clip 1] The bartender pours whiskey\n"
     "3. [clip 3] A fight breaks out\n4. [clip 5] The man escapes", [0, 1, 3, 5]),
    ("Here are the events:\n- Clip 4: Police arrive\n- Clip 1: The bartender pours a drink\n"
     "- Clip 0: The man enters", [0, 1, 4]),  # out of order: sorted by clip time
    ('```json\n[{"clip": 3, "event": "A fight breaks out"}, {"clip": 5, "event": "He escapes"}]\n```', [3, 5]),
    # no clip references: matched to the most similar caption
    ("1) The bartender pours him a glass of whiskey.\n2) A fight breaks out near the pool table.\n"
     "3) Completely unrelated words xyz.", [1, 3]),
    ("1. [clip 9] A clip that does not exist\n2. [clip 1] Pours whiskey\n3. [clip 1] Pours more whiskey",
     [1]),  # unknown clip dropped (no similar caption), at most one clue per clip
    ("I cannot help with that.", []),
]


@pytest.mark.parametrize("answer,clips", CANNED)
def test_parse_canned_llm_answers(answer, clips):
    clues = clues_from_llm(answer, CAPS)
    assert [c.clip_index for c in clues] == clips
    assert all(c.text[0].isupper() and c.text.endswith(".") for c in clues)
    assert all(c.start_s == c.clip_index * 14.0 for c in clues)


def test_parse_clue_lines_shapes():
    assert parse_clue_lines("1. [clip 2] X\n2. Y\n* (clip 3) Z") == [(2, "X"), (None, "Y"), (3, "Z")]
    assert parse_clue_lines('["a", "b"]') == [(None, "a"), (None, "b")]
    assert parse_clue_lines("") == []
    prompt = build_prompt(CAPS, 4)
    assert "[clip 5] (70.0-84.0 s) The man escapes" in prompt and "[clip 2]" not in prompt
    assert "at least 4 events" in prompt


# ----------------------------------------------------------------------------------------------
# hf-llm on a tiny random Qwen2 saved by the test


@pytest.fixture(scope="module")
def tiny_llm_dir(tmp_path_factory):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from model.tokenizer import tiny_tokenizer

    out = tmp_path_factory.mktemp("tiny_llm")
    tok = tiny_tokenizer()
    cfg = Qwen2Config(vocab_size=576, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                      bos_token_id=512, eos_token_id=514, pad_token_id=512, tie_word_embeddings=False)
    torch.manual_seed(0)
    Qwen2ForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_hf_llm_random_model_reports_fewer_clues(tiny_llm_dir):
    from vico_synth.pipeline import SynthSettings, VideoInput, synth_video
    from vico_synth.samples import SampleConfig

    ext = make_extractor("hf-llm", {"model": str(tiny_llm_dir), "max_new_tokens": 24, "device": "cpu"})
    clues = ext.extract(CAPS, 4)
    assert isinstance(ext.last_answer, str)
    assert clues == clues_from_llm(ext.last_answer, CAPS)  # random text: whatever parses, nothing invented
    assert len(clues) < 4

    class Fixed:
        name = "fixed"
        needs_frames = False

        def caption(self, clip):
            return CAPS[clip.clip.index].caption

    settings = SynthSettings(clip_seconds=14.0, samples=SampleConfig(k_min=4, k_max=4, min_gap_s=14.0))
    ts = np.arange(0, 84, 1.0)
    res = synth_video(VideoInput("xxh3-128:00", "v.mp4", "v.mp4", None, ts, 84.0), Fixed(), ext, settings)
    assert res.skip_kind == "too_few_clues" and "extractor hf-llm returned" in res.skipped_reason


def test_hf_llm_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a local model folder"):
        HFLLMExtractor(model=str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="needs a model"):
        make_extractor("hf-llm", {})


# ----------------------------------------------------------------------------------------------
# openai-compatible against a real local HTTP server


class _Handler(BaseHTTPRequestHandler):
    requests: list = []
    answer = ""
    status = 200

    def do_POST(self):  # noqa: N802 - http.server API
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
        payload = json.dumps({"id": "x", "object": "chat.completion", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": type(self).answer}, "finish_reason": "stop"}]})
        data = payload.encode() if type(self).status == 200 else b'{"error": "overloaded"}'
        self.send_response(type(self).status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def llm_server():
    _Handler.requests = []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield srv, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_openai_compatible_over_http(llm_server):
    srv, url = llm_server
    _Handler.status, _Handler.answer = 200, CANNED[0][0]
    ext = make_extractor("openai-compatible", {"base_url": url, "model": "qwen2-7b", "api_key": "sk-test"})
    clues = ext.extract(CAPS, 4)
    assert [c.clip_index for c in clues] == [0, 1, 3, 5]
    req = _Handler.requests[-1]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sk-test"
    assert req["body"]["model"] == "qwen2-7b" and req["body"]["temperature"] == 0.0
    assert "[clip 3]" in req["body"]["messages"][-1]["content"]
    # a base URL ending in /v1 is not doubled
    make_extractor("openai-compatible", {"base_url": url + "/v1", "model": "m"}).extract(CAPS, 4)
    assert _Handler.requests[-1]["path"] == "/v1/chat/completions"
    _Handler.status = 503
    with pytest.raises(ExtractorError, match="HTTP 503"):
        ext.extract(CAPS, 4)


def test_openai_compatible_is_off_unless_configured(monkeypatch):
    monkeypatch.delenv("VXL_VICO_LLM_URL", raising=False)
    monkeypatch.delenv("VXL_VICO_LLM_MODEL", raising=False)
    with pytest.raises(ValueError, match="off until configured"):
        make_extractor("openai-compatible")
    ext = make_extractor("openai-compatible", {"base_url": "http://127.0.0.1:9", "model": "m", "timeout_s": 2})
    with pytest.raises(ExtractorError, match="cannot reach"):
        ext.extract(CAPS, 4)


# ----------------------------------------------------------------------------------------------
# videoxl and hf-vlm captioners


def _clip_inputs(n_clips=2, per_clip=3, size=(48, 64)) -> list[ClipInput]:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (n_clips * per_clip, *size, 3), dtype=np.uint8)
    ts = np.arange(n_clips * per_clip, dtype=np.float64)
    return [ClipInput("xxh3-128:00", "v.mp4", c, frames[c.frame_start:c.frame_end], ts[c.frame_start:c.frame_end],
                      float(len(ts)))
            for c in clip_spans(ts, float(per_clip), duration_s=float(len(ts)))]


def test_videoxl_captioner_on_tiny_model(tiny_vx):
    cap = make_captioner("videoxl", {"max_new_tokens": 6})
    assert isinstance(cap, VideoXLCaptioner) and cap.heavy and cap.needs_frames
    cap._vx = tiny_vx  # the session's tiny model (load_model("tiny") otherwise)
    clips = _clip_inputs()
    caps = [cap.caption(c) for c in clips]
    assert len(caps) == 2 and all(isinstance(c, str) for c in caps)
    assert caps == [cap.caption(c) for c in clips]  # greedy: deterministic


def test_hf_vlm_loading_errors_and_frame_sampling(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a local model folder"):
        make_captioner("hf-vlm", {"model": str(tmp_path / "missing")})
    with pytest.raises(ValueError, match="needs a model"):
        make_captioner("hf-vlm")
    (tmp_path / "config.json").write_text("{}")
    cap = HFVLMCaptioner(model=str(tmp_path), num_frames=4)
    clip = _clip_inputs(n_clips=1, per_clip=10)[0]
    picked = cap.select_frames(clip)
    assert picked.shape == (4, 48, 64, 3)
    assert np.array_equal(picked, clip.frames[[0, 3, 6, 9]])
    small = _clip_inputs(n_clips=1, per_clip=2)[0]
    assert cap.select_frames(small).shape[0] == 2
    with pytest.raises(CaptionerError, match="not a loadable image-text-to-text model folder"):
        cap.caption(clip)  # an empty config.json is not a model: a typed error naming the folder


@pytest.fixture(scope="module")
def tiny_vlm_dir(tmp_path_factory):
    """A tiny random LLaVA (CLIP 28 px + Qwen2) with its processor and a ChatML chat template."""
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        Qwen2Config,
    )

    from model.tokenizer import tiny_tokenizer

    out = tmp_path_factory.mktemp("tiny_vlm")
    tok = tiny_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<image>"]})
    template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
        "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}"
        "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    tok.chat_template = template
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=28, patch_size=14, projection_dim=32)
    text = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=1, eos_token_id=514, pad_token_id=512,
                       bos_token_id=512)
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids("<image>"),
                      vision_feature_layer=-2, vision_feature_select_strategy="default")
    torch.manual_seed(0)
    LlavaForConditionalGeneration(cfg).save_pretrained(out)
    proc = LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 28},
                                                             crop_size={"height": 28, "width": 28}),
                          tokenizer=tok, patch_size=14, vision_feature_select_strategy="default",
                          chat_template=template, num_additional_image_tokens=1)
    proc.save_pretrained(out)
    return out


def test_hf_vlm_end_to_end_on_tiny_random_llava(tiny_vlm_dir):
    cap = make_captioner("hf-vlm", {"model": str(tiny_vlm_dir), "num_frames": 3, "max_new_tokens": 5,
                                    "device": "cpu"})
    clips = _clip_inputs(n_clips=2, per_clip=4)
    caps = [cap.caption(c) for c in clips]
    assert all(isinstance(c, str) for c in caps)
    assert caps == [cap.caption(c) for c in clips]  # greedy: deterministic
