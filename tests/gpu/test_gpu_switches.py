"""bf16 autocast and torch.compile on a CUDA GPU; activation checkpointing everywhere.

The GPU tests skip with the reason where no CUDA device is present (CPU-only machines).
"""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch

from clipray.config import load_config
from clipray.train.objectives import ContrastiveObjective

N = 32
TINY = {"name": "t", "model": {"embed_dim": 32, "vision": {"image_size": 32, "patch_size": 8, "width": 64,
                                                           "layers": 2, "heads": 2},
                               "text": {"context_length": 16, "vocab_size": 128, "width": 64, "layers": 2,
                                        "heads": 2}},
        "train": {"global_batch_size": N, "num_workers": 1}}

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU: bf16 autocast and torch.compile are exercised on GPU only")


def batch():
    g = torch.Generator().manual_seed(0)
    return {"image": torch.randint(0, 256, (N, 32, 32, 3), generator=g, dtype=torch.uint8),
            "tokens": torch.randint(1, 128, (N, 16), generator=g, dtype=torch.int32)}


def step(device: str, *overrides: str, autocast: bool = False) -> tuple[float, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    cfg = load_config(data=copy.deepcopy(TINY), overrides=list(overrides))  # load_config may edit its input
    obj = ContrastiveObjective(cfg, rank=0, world_size=1, device=torch.device(device))

    def ctx():
        return torch.autocast(device, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()

    losses, _ = obj.forward_backward(batch(), ctx)
    return float(losses["loss"].detach()), {n: p.grad.detach().float().cpu() for n, p in obj.module.named_parameters()}


def test_activation_checkpointing_gives_the_same_gradients():
    ref_loss, ref = step("cpu")
    loss, got = step("cpu", "train.grad_checkpointing=true")
    assert abs(loss - ref_loss) < 1e-6
    for name in ref:
        assert torch.allclose(got[name], ref[name], atol=1e-6), name


@pytest.mark.gpu
@needs_cuda
def test_bf16_autocast_step_close_to_fp32():
    ref_loss, ref = step("cuda")
    loss, got = step("cuda", "train.precision=bf16", autocast=True)
    assert abs(loss - ref_loss) < 0.05 * abs(ref_loss)
    cos = torch.nn.functional.cosine_similarity(torch.cat([g.flatten() for g in got.values()]),
                                                torch.cat([g.flatten() for g in ref.values()]), dim=0)
    assert cos > 0.98, float(cos)


@pytest.mark.gpu
@needs_cuda
def test_compiled_towers_match_eager():
    ref_loss, ref = step("cuda")
    loss, got = step("cuda", "train.compile=true")
    assert abs(loss - ref_loss) < 1e-4
    for name in ref:
        assert torch.allclose(got[name], ref[name], atol=1e-4, rtol=1e-3), name
