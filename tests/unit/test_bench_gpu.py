"""`clipray bench gpu` on a machine without CUDA: a clear message and exit status 0."""

import pytest
import torch

from clipray.cli import main
from clipray.errors import UnknownNameError


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the benchmark would run")
def test_bench_gpu_without_cuda_says_no_gpu_and_exits_0(capsys):
    assert main(["bench", "gpu"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("no GPU:") and "nothing was measured" in out


def test_bench_gpu_rejects_unknown_model():
    from clipray.bench.gpu import model_config

    with pytest.raises(UnknownNameError, match="unknown model 'ViT-X'"):
        model_config("ViT-X")
    assert model_config("ViT-B/16").vision.patch_size == 16
