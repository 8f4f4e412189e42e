import math

import torch

from clipray.config import load_config
from clipray.models import build_model
from clipray.text import load_tokenizer

TINY = {"name": "t", "model": {"embed_dim": 24, "vision": {"image_size": 32, "patch_size": 8, "width": 32,
                                                           "layers": 2, "heads": 4},
                               "text": {"context_length": 16, "width": 32, "layers": 2, "heads": 4}}}


def tiny_model(**text):
    cfg = load_config(data=TINY, overrides=[f"model.text.{k}={v}" for k, v in text.items()])
    return build_model(cfg.model), cfg


def test_shapes_and_normalisation():
    model, _cfg = tiny_model()
    ids = torch.from_numpy(load_tokenizer("words", 16)(["a red circle", "two blue squares on a gray background"]))
    img, txt, scale = model(torch.randn(2, 3, 32, 32), ids.long())
    assert img.shape == txt.shape == (2, 24)
    assert torch.allclose(img.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert math.isclose(scale.item(), 1 / 0.07, rel_tol=1e-5)
    assert model.encode_image(torch.randn(3, 3, 32, 32)).shape == (3, 24)


def test_openai_key_layout():
    model, _ = tiny_model()
    keys = set(model.state_dict())
    for key in ["logit_scale", "positional_embedding", "text_projection", "token_embedding.weight", "ln_final.weight",
                "transformer.resblocks.0.attn.in_proj_weight", "transformer.resblocks.1.mlp.c_fc.weight",
                "visual.conv1.weight", "visual.class_embedding", "visual.proj", "visual.ln_pre.weight",
                "visual.transformer.resblocks.0.ln_1.weight", "visual.ln_post.bias"]:
        assert key in keys, key
    assert model.state_dict()["visual.proj"].shape == (32, 24)  # [in, out] as OpenAI stores it


def test_causal_text_tower_ignores_tokens_after_eot():
    model, _ = tiny_model()
    model.eval()
    ids = torch.zeros(2, 16, dtype=torch.long)
    ids[:, :4] = torch.tensor([49406, 10, 20, 49407])
    ids[1, 6] = 123  # after EOT: invisible to the EOT position under a causal mask
    out = model.encode_text(ids)
    assert torch.allclose(out[0], out[1], atol=1e-6)


def test_bidirectional_mean_pooling_runs():
    model, _ = tiny_model(attn="bidirectional", pool="mean")
    ids = torch.from_numpy(load_tokenizer("words", 16)(["a", "a b c d"])).long()
    assert model.encode_text(ids).shape == (2, 24)


def test_logit_scale_clamped_at_100():
    model, _ = tiny_model()
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    model.clamp_logit_scale()
    assert math.isclose(model.logit_scale.exp().item(), 100.0, rel_tol=1e-5)
