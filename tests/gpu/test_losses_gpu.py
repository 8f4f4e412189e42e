"""On a CUDA GPU, under bf16 autocast, both losses' gradients are at least as accurate as plain
autograd of the full-matrix loss under the same autocast (the CPU comparison of
tests/unit/test_loss_bf16.py, here at B = 1024). Skipped with the reason where no CUDA device is
present.

CUDA autocast hands the loss fp32 features (F.normalize's norm runs in fp32), so both feature
dtypes are checked again. TF32 matmuls are switched off for the test: the losses' fp32 logits
are then true fp32, as on CPU, whatever the process set before.
"""

from __future__ import annotations

import pytest
import torch

from tests.unit.test_loss_bf16 import SCALES, bf16_errors, check_at_least_as_accurate

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU: the losses' bf16 autocast accuracy on CUDA")


@pytest.fixture
def no_tf32():
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = before


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("feature_dtype", [torch.float32, torch.bfloat16], ids=["fp32-features", "bf16-features"])
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
def test_cuda_bf16_autocast_gradients_at_least_as_accurate_as_naive(no_tf32, kind, scale, feature_dtype):
    ours, naive = bf16_errors(kind, scale, feature_dtype, "cuda", n=1024)
    check_at_least_as_accurate(ours, naive, feature_dtype)
