"""Retrieval Recall@K, modality gap, zero-shot from embeddings, FLOPs count, SDPA attention parity."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipray.bench.flops import image_forward_flops, text_forward_flops, train_flops_per_sample
from clipray.config.schema import ModelConfig, VisionConfig
from clipray.eval.gap import modality_gap
from clipray.eval.retrieval import caption_groups, retrieval_metrics
from clipray.eval.run import set_name
from clipray.eval.suite import score_embeddings
from clipray.eval.zeroshot import zero_shot_metrics


def test_recall_at_k_against_a_hand_computed_case():
    img = torch.eye(4)
    # text 0 -> image 0 exactly; text 1 nearest image 2 then image 1; texts 2, 3 point at image 3.
    txt = F.normalize(torch.tensor([[1.0, 0, 0, 0], [0, 0.6, 0.8, 0], [0, 0, 0.1, 1], [0, 0, 0, 1]]), dim=-1)
    m = retrieval_metrics(img, txt, image_groups=[0, 1, 2, 3], text_groups=[0, 1, 2, 3], ks=(1, 2))
    assert m["eval/t2i_r1"] == pytest.approx(2 / 4)  # texts 0 and 3 hit at rank 1
    assert m["eval/t2i_r2"] == pytest.approx(4 / 4)
    assert m["eval/i2t_r1"] == pytest.approx(3 / 4)  # image 2's nearest text is text 1 (0.8 > 0.1)
    assert m["eval/i2t_r2"] == pytest.approx(4 / 4)
    assert m["eval/rsum"] == pytest.approx(0.5 + 1.0 + m["eval/i2t_r1"] + m["eval/i2t_r2"])


def test_recall_is_the_same_in_chunks_and_with_random_embeddings_near_chance():
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(300, 16, generator=g), dim=-1)
    txt = F.normalize(torch.randn(300, 16, generator=g), dim=-1)
    ids = np.arange(300)
    whole = retrieval_metrics(img, txt, ids, ids)
    chunked = retrieval_metrics(img, txt, ids, ids, chunk=7)
    assert whole == chunked
    assert whole["eval/t2i_r10"] < 0.15  # chance is 10/300
    perfect = retrieval_metrics(img, img.clone(), ids, ids)
    assert perfect["eval/i2t_r1"] == perfect["eval/t2i_r1"] == 1.0


def test_caption_groups_make_repeated_captions_one_text():
    unique, groups = caption_groups(["a cat", "a dog", "a cat"])
    assert unique == ["a cat", "a dog"] and groups.tolist() == [0, 1, 0]


def test_modality_gap_is_centroid_distance():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    y = torch.tensor([[0.0, 2.0], [0.0, 5.0]])  # normalised inside
    m = modality_gap(x, y)
    assert m["eval/modality_gap"] == pytest.approx(math.sqrt(2))
    assert m["eval/matched_cos"] == pytest.approx(0.0)
    assert modality_gap(x, x)["eval/modality_gap"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="paired rows"):
        modality_gap(x, y[:1])


def test_zero_shot_metrics_and_prompt_ensemble():
    weights = torch.eye(3)
    feats = torch.tensor([[0.9, 0.1, 0], [0, 1, 0], [1, 0, 0.2]])
    m = zero_shot_metrics(feats, [0, 1, 2], weights)
    assert m["eval/zeroshot_top1"] == pytest.approx(2 / 3)
    assert m["eval/zeroshot_chance"] == pytest.approx(1 / 3)

    # score_embeddings averages normalised prompt embeddings per class: a text encoder that maps the
    # class name to its axis makes every image of that axis correct.
    def encode(texts):
        return F.normalize(torch.stack([torch.eye(3)[["x", "y", "z"].index(t.split()[-1])] + 0.01 for t in texts]),
                           dim=-1)

    out = score_embeddings(torch.eye(3), [0, 1, 2], ["a x", "a y", "a z"], ["x", "y", "z"], ["a {}", "the {}"],
                           encode).metrics
    assert out["eval/zeroshot_top1"] == 1.0 and out["eval/t2i_r1"] == 1.0 and out["eval/i2t_r1"] == 1.0
    assert 0 <= out["eval/modality_gap"] < 0.1


def test_flops_match_open_clip_profile():
    b32 = ModelConfig(vision=VisionConfig(patch_size=32))
    b16 = ModelConfig(vision=VisionConfig(patch_size=16))
    assert image_forward_flops(b32) / 1e9 == pytest.approx(8.82, abs=0.01)
    assert image_forward_flops(b16) / 1e9 == pytest.approx(35.13, abs=0.01)
    assert text_forward_flops(b32) / 1e9 == pytest.approx(5.96, abs=0.01)
    assert train_flops_per_sample(b16) / 1e9 == pytest.approx(123.3, abs=0.1)


def test_sdpa_attention_matches_multihead_attention_and_keeps_its_keys():
    from clipray.models.common.transformer import Attention

    torch.manual_seed(0)
    ours, ref = Attention(32, 4), torch.nn.MultiheadAttention(32, 4, batch_first=True)
    ref.load_state_dict(ours.state_dict())  # same parameter names and shapes
    x = torch.randn(3, 7, 32)
    causal = torch.full((7, 7), float("-inf")).triu_(1)
    pad = torch.zeros(3, 7, dtype=torch.bool)
    pad[1, 5:] = True
    for mask, kpm in [(None, None), (causal, None), (None, pad)]:
        expected = ref(x, x, x, attn_mask=mask, key_padding_mask=kpm, need_weights=False)[0]
        assert torch.allclose(ours(x, mask, kpm), expected, atol=1e-5)


def test_set_name_from_path():
    assert set_name("data/digits/eval") == "digits"
    assert set_name("sets/mnist/") == "mnist"
    assert set_name("data/demo/eval/part-00000.parquet") == "demo"


def test_zero_shot_top1_per_class_attribute(tmp_path):
    import json

    from clipray.eval.zeroshot import load_class_attributes

    classes = ["red circle", "red square", "blue circle", "blue square"]
    attributes = {"colour": ["red", "red", "blue", "blue"], "shape": ["circle", "square", "circle", "square"]}
    weights = torch.eye(4)
    # true 0 -> predicted 1 (colour right, shape wrong); 2 -> 0 (shape right); 3 -> 3; 1 -> 2 (both wrong)
    feats = torch.eye(4)[[1, 0, 3, 2]]
    m = zero_shot_metrics(feats, [0, 2, 3, 1], weights, attributes)
    assert m["eval/zeroshot_top1"] == pytest.approx(1 / 4)
    assert m["eval/zeroshot_top1_colour"] == pytest.approx(2 / 4)
    assert m["eval/zeroshot_top1_shape"] == pytest.approx(2 / 4)
    assert "eval/zeroshot_top1_colour" not in zero_shot_metrics(feats, [0, 2, 3, 1], weights)

    (tmp_path / "classes.json").write_text(json.dumps({"classes": classes, "attributes": attributes}))
    assert load_class_attributes(str(tmp_path)) == attributes
    (tmp_path / "classes.json").write_text(json.dumps({"classes": classes}))
    assert load_class_attributes(str(tmp_path)) is None
    (tmp_path / "classes.json").write_text(json.dumps({"classes": classes, "attributes": {"colour": ["red"]}}))
    with pytest.raises(ValueError, match="one per class"):
        load_class_attributes(str(tmp_path))


def test_eval_table_lists_top1_per_attribute():
    from clipray.eval.run import EvalResult, format_table

    metrics = {"eval/zeroshot_top1": 0.5, "eval/zeroshot_top1_colour": 1.0, "eval/zeroshot_top1_shape": 0.5,
               "eval/zeroshot_classes": 4.0, "eval/images": 8.0}
    table = format_table(EvalResult("demo", metrics, None, "sqlite://", 1.0)).splitlines()
    top1 = table.index("| zero-shot top-1 | 0.5000 |")
    assert table[top1 + 1 : top1 + 3] == ["| zero-shot top-1, colour | 1.0000 |", "| zero-shot top-1, shape | 0.5000 |"]
