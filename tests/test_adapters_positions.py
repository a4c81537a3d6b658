"""Qwen2.5-VL's 3-D M-RoPE positions reach the backbone's image tokens (transformers 5 needs mm_token_type_ids).

Oracle: the position ids the language model receives. An image token's (temporal, height, width) rows differ
(2-D patch grid); a text token's three rows are equal. A forward without the token types (text-only positions,
what transformers 5 silently does when `mm_token_type_ids` is dropped) gives other features.
"""

from __future__ import annotations

import pytest
import torch

from adapters import BackboneConfig, build_backbone


@pytest.fixture(scope="module")
def backbone(tiny_backbone_dir):
    return build_backbone(BackboneConfig(key="tiny", path=str(tiny_backbone_dir)))


def _capture_positions(backbone, images, texts, query_embeds=None):
    seen = {}

    def hook(_module, _args, kwargs):
        seen["position_ids"] = kwargs["position_ids"]

    handle = backbone.model.language_model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        out = backbone(images, texts, query_embeds=query_embeds)
    finally:
        handle.remove()
    return seen["position_ids"], out


def test_image_tokens_get_3d_positions_and_queries_text_positions(backbone):
    g = torch.Generator().manual_seed(0)
    images, texts = torch.rand(2, 2, 3, 224, 224, generator=g), ["pick up the bowl", "go"]
    queries = torch.randn(3, backbone.hidden_size, generator=g)
    pos, out = _capture_positions(backbone, images, texts, queries)
    ids = backbone._preprocess(images, texts)["input_ids"]  # (B, L)
    B, L = ids.shape
    assert pos is not None and pos.shape[-2:] == (B, L + 3), "no position ids passed to the language model"
    pos = pos[-3:]  # (3, B, L+K): temporal, height, width (transformers 5 may prepend a text row)
    image = ids == backbone.model.config.image_token_id  # (B, L)
    mask = backbone._preprocess(images, texts)["attention_mask"].bool()
    for b in range(B):
        img = pos[:, b, :L][:, image[b]]  # (3, n_image_tokens)
        assert not torch.equal(img[1], img[2]), "image tokens: height and width positions are equal"
        assert len(set(img[1].tolist())) > 1 and len(set(img[2].tolist())) > 1
        text = pos[:, b, :L][:, mask[b] & ~image[b]]
        assert torch.equal(text[0], text[1]) and torch.equal(text[1], text[2])
        q = pos[:, b, L:]  # the appended queries are text: equal rows, increasing
        assert torch.equal(q[0], q[1]) and torch.equal(q[1], q[2]) and (q[0].diff() == 1).all()


def test_features_differ_from_a_text_only_position_forward(backbone, monkeypatch):
    g = torch.Generator().manual_seed(1)
    images, texts = torch.rand(1, 2, 3, 224, 224, generator=g), ["put the soup in the basket"]
    want = backbone(images, texts)["tokens"]
    original = backbone._preprocess

    def without_types(*args, **kwargs):
        inputs = original(*args, **kwargs)
        inputs["mm_token_type_ids"] = torch.zeros_like(inputs["mm_token_type_ids"])  # all text
        return inputs

    monkeypatch.setattr(backbone, "_preprocess", without_types)
    pos, out = _capture_positions(backbone, images, texts)
    assert torch.equal(pos[-3][0], pos[-2][0]), "all-text types should give 1-D positions"
    assert not torch.allclose(out["tokens"], want), "features do not depend on the image tokens' positions"
