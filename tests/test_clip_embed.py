"""ClipEmbedder (model/clip_embed.py) on the tiny random open_clip config, CPU only, no downloads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.clip_embed import TINY_CLIP, ClipEmbedder
from model.dynamic import plan_dynamic

COLOURS = [(220, 30, 30), (30, 200, 40), (40, 40, 220), (230, 220, 30), (240, 240, 240)]


def colour_frames(lengths, *, size=64, noise=12.0, seed=0) -> np.ndarray:
    """uint8 (sum(lengths), size, size, 3): scene k is solid `COLOURS[k]` plus Gaussian pixel noise."""
    rng = np.random.default_rng(seed)
    scenes = [
        np.array(COLOURS[k], np.float64) + rng.normal(0.0, noise, (n, size, size, 3))
        for k, n in enumerate(lengths)
    ]
    return np.clip(np.concatenate(scenes), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def tiny_clip() -> ClipEmbedder:
    return ClipEmbedder(TINY_CLIP, device="cpu", batch_size=4)


def test_image_embeddings_normalised_and_shaped(tiny_clip):
    frames = np.random.default_rng(1).integers(0, 256, (5, 48, 80, 3), dtype=np.uint8)
    out = tiny_clip.embed_images(frames)
    assert out.dtype == np.float32 and out.shape == (5, 32) == (5, tiny_clip.embed_dim)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(tiny_clip.embed_images(torch.from_numpy(frames)), out, atol=1e-6)


def test_batch_size_independent(tiny_clip):
    frames = colour_frames([4, 5], size=40)
    a = ClipEmbedder(TINY_CLIP, device="cpu", batch_size=2).embed_images(frames)
    b = ClipEmbedder(TINY_CLIP, device="cpu", batch_size=7).embed_images(frames)
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


def test_deterministic_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a, b = ClipEmbedder(TINY_CLIP, device="cpu"), ClipEmbedder(TINY_CLIP, device="cpu")
    assert torch.equal(state, torch.get_rng_state())
    for (name, pa), (_, pb) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert torch.equal(pa, pb), name
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 64
    frames = colour_frames([3], size=32)
    assert np.array_equal(a.embed_images(frames), b.embed_images(frames))


def test_text_embeddings(tiny_clip):
    out = tiny_clip.embed_text(["a red circle appears", "a blue square", ""])
    assert out.dtype == np.float32 and out.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(out[0], out[1])
    np.testing.assert_allclose(tiny_clip.embed_text(["a blue square"])[0], out[1], atol=1e-5)


def test_preprocess_matches_open_clip_transform(tiny_clip):
    """Tensor preprocessing reproduces open_clip's PIL eval transform up to interpolation rounding."""
    import open_clip
    from PIL import Image

    _, _, transform = open_clip.create_model_and_transforms(TINY_CLIP)
    yy, xx = np.mgrid[0:120, 0:160]
    frames = np.stack(
        [np.stack([(xx * 1.5 + 20 * k) % 256, yy * 2, (xx + yy) % 256], -1) for k in range(3)]
    ).astype(np.uint8)
    frames[:, 40:80, 50:100] = (255, 0, 0)
    ref = torch.stack([transform(Image.fromarray(f)) for f in frames])  # (3, 3, 64, 64)
    ours = tiny_clip.preprocess(torch.from_numpy(frames))
    assert ours.shape == ref.shape == (3, 3, 64, 64)
    assert (ours - ref).abs().max() < 0.02  # one grey level: 1 / 255 / std
    assert (ours - ref).abs().mean() < 1e-3
    with torch.inference_mode():
        cos = torch.nn.functional.cosine_similarity(
            tiny_clip.model.encode_image(ours), tiny_clip.model.encode_image(ref)
        )
    assert cos.min() > 0.999


def test_weights_file_loaded_and_fingerprinted(tiny_clip, tmp_path):
    state = tiny_clip.model.state_dict()
    state = {k: v.clone() for k, v in state.items()}
    state["visual.conv1.weight"] *= -1.0
    path = tmp_path / "tiny_clip.pt"
    torch.save(state, path)
    loaded = ClipEmbedder(TINY_CLIP, weights=path, device="cpu")
    assert torch.equal(loaded.model.state_dict()["visual.conv1.weight"], state["visual.conv1.weight"])
    assert loaded.fingerprint != tiny_clip.fingerprint
    assert ClipEmbedder(TINY_CLIP, weights=str(path), device="cpu").fingerprint == loaded.fingerprint
    frames = colour_frames([2], size=32)
    assert not np.allclose(loaded.embed_images(frames), tiny_clip.embed_images(frames))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ClipEmbedder(TINY_CLIP, weights=tmp_path / "missing.pt")


@pytest.mark.parametrize(
    "frames, match",
    [
        (np.zeros((2, 8, 8, 3), np.float32), "uint8"),
        (np.zeros((8, 8, 3), np.uint8), r"shape \(F, H, W, 3\)"),
        (np.zeros((2, 8, 8, 4), np.uint8), r"shape \(F, H, W, 3\)"),
        (np.zeros((0, 8, 8, 3), np.uint8), "empty"),
        ([[0]], "numpy array or torch tensor"),
    ],
)
def test_bad_frames(tiny_clip, frames, match):
    with pytest.raises(ValueError, match=match):
        tiny_clip.embed_images(frames)


def test_bad_constructor_and_text_args(tiny_clip):
    with pytest.raises(ValueError, match="unknown open_clip model"):
        ClipEmbedder("no-such-model")
    with pytest.raises(ValueError, match="batch_size"):
        ClipEmbedder(TINY_CLIP, batch_size=0)
    with pytest.raises(ValueError, match="non-empty list"):
        tiny_clip.embed_text("a bare string")
    with pytest.raises(ValueError, match="non-empty list"):
        tiny_clip.embed_text([])


def test_colour_cuts_found_by_tiny_clip(tiny_clip):
    """Random weights still separate solid colours: boundaries within one frame of each cut."""
    lengths = [12, 10, 14, 12]
    cuts = np.cumsum(lengths)[:-1].tolist()  # [12, 22, 36]
    emb = tiny_clip.embed_images(colour_frames(lengths))
    plan = plan_dynamic(emb, tokens_per_frame=144, window_tokens=1440)
    plan.validate(48, 1440)
    found = plan.extras["boundaries"]
    assert len(found) == len(cuts)
    for cut, b in zip(cuts, found, strict=True):
        assert abs(cut - b) <= 1
    assert plan.num_vst == 48 * 144 // 8


def test_static_colour_shot_has_no_boundaries(tiny_clip):
    emb = tiny_clip.embed_images(colour_frames([25], seed=3))
    plan = plan_dynamic(emb, tokens_per_frame=144, window_tokens=1440)
    assert plan.extras["boundaries"] == []
    assert [(w.frame_start, w.frame_end, w.ratio) for w in plan.windows] == [(0, 9, 8), (9, 17, 8), (17, 25, 8)]
