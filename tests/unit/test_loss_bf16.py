"""Under bf16 autocast both losses' gradients are at least as accurate as plain autograd of the
full-matrix loss under the same autocast; without autocast, in fp32, they are exact.

Accuracy is the relative error (‖got - ref‖ / ‖ref‖) against an fp64 computation of the
full-matrix loss on the same input values. The features are clustered, as a model's are once it
has learnt something: a row's cluster-mates score within a few units of its positive at logit
scale 100, where a bf16 logit (8-bit mantissa, an error of up to 0.25 near 64-128) is off by
about as much as the logits differ. Two feature dtypes reach the loss under autocast: fp32 on
CUDA (F.normalize's norm runs in fp32 there) and bf16 on CPU.

tests/gpu/test_losses_gpu.py runs the same comparison on a CUDA device.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from clipray.losses import (
    naive_sigmoid_loss,
    naive_softmax_loss,
    sigmoid_contrastive_loss,
    softmax_contrastive_loss,
)

B, D = 512, 512  # tests/gpu/test_losses_gpu.py: 1024
SCALES = (14.0, 50.0, 100.0)  # 14.3 = 1/0.07, CLIP's initial scale; 100 = its clamp
BIAS = -10.0  # SigLIP's initial bias
# bf16's unit roundoff: a gradient returned in bf16 is off by this much however it was computed.
BF16_ROUNDING = 2.0**-8
# fp32 features: fp32 rounding only (the temperature gradient sums B x N terms that cancel).
FP32_FLOOR = 1e-4
TIE = 1e-3  # where both sit at that rounding floor, either may come out marginally ahead

Loss = Callable[..., torch.Tensor]
LOSSES: dict[str, tuple[Loss, Loss]] = {
    "softmax": (lambda i, t, s, b: softmax_contrastive_loss(i, t, s), lambda i, t, s, b: naive_softmax_loss(i, t, s)),
    "sigmoid": (sigmoid_contrastive_loss, naive_sigmoid_loss),
}
NAMES = ("image", "text", "log_scale", "bias")


def clustered_features(n: int = B, dim: int = D, clusters: int = 16, spread: float = 0.1,
                       seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 unit rows in `clusters` tight groups; text row i is a noisy copy of image row i."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, dim, generator=g)
    which = torch.randint(0, clusters, (n,), generator=g)
    image = F.normalize(centres[which] + spread * torch.randn(n, dim, generator=g), dim=-1)
    text = F.normalize(image + spread / 2 * torch.randn(n, dim, generator=g), dim=-1)
    return image, text


def loss_and_grads(loss: Loss, image: torch.Tensor, text: torch.Tensor, scale: float, *, dtype: torch.dtype,
                   autocast: str | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss and the gradients w.r.t. the features (in `dtype`), log scale and bias (fp32
    parameters, or fp64 for an fp64 run), all as fp64 on the CPU."""
    param_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    inputs = [image.to(dtype), text.to(dtype), torch.tensor(scale, dtype=param_dtype).log(),
              torch.tensor(BIAS, dtype=param_dtype)]
    inputs = [x.detach().to(image.device).requires_grad_(True) for x in inputs]
    ctx = torch.autocast(autocast, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with ctx:
        # The temperature enters as the exp of a parameter, as in the models.
        value = loss(inputs[0], inputs[1], inputs[2].exp(), inputs[3])
    value.backward()
    grads = {n: x.grad.detach().double().cpu() for n, x in zip(NAMES, inputs) if x.grad is not None}
    return value.detach().double().cpu(), grads


def relative_errors(got: tuple[torch.Tensor, dict[str, torch.Tensor]],
                    ref: tuple[torch.Tensor, dict[str, torch.Tensor]]) -> dict[str, float]:
    out = {"loss": float((got[0] - ref[0]).abs() / ref[0].abs())}
    for name, r in ref[1].items():
        out[name] = float((got[1][name] - r).norm() / r.norm())
    return out


def bf16_errors(kind: str, scale: float, feature_dtype: torch.dtype, device: str,
                n: int = B) -> tuple[dict[str, float], dict[str, float]]:
    """Relative errors vs fp64 of clipray's loss and of the naive one, both under bf16 autocast."""
    ours, naive = LOSSES[kind]
    image, text = (t.to(device) for t in clustered_features(n))
    # The fp64 reference starts from the values the loss is given (bf16 features: rounded).
    image, text = image.to(feature_dtype), text.to(feature_dtype)
    ref = loss_and_grads(naive, image, text, scale, dtype=torch.float64, autocast=None)
    got = loss_and_grads(ours, image, text, scale, dtype=feature_dtype, autocast=device)
    plain = loss_and_grads(naive, image, text, scale, dtype=feature_dtype, autocast=device)
    return relative_errors(got, ref), relative_errors(plain, ref)


def check_at_least_as_accurate(ours: dict[str, float], naive: dict[str, float], feature_dtype: torch.dtype) -> None:
    assert set(ours) >= {"loss", "image", "text", "log_scale"}, ours
    for name in ours:
        assert ours[name] <= naive[name] + TIE, (name, ours, naive)
    # Stronger: computed in fp32, the only error left is rounding the gradient to the features' dtype.
    floor = BF16_ROUNDING if feature_dtype == torch.bfloat16 else FP32_FLOOR
    assert max(ours.values()) <= floor, (ours, naive)


@pytest.mark.parametrize("feature_dtype", [torch.float32, torch.bfloat16], ids=["fp32-features", "bf16-features"])
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
def test_bf16_autocast_gradients_at_least_as_accurate_as_naive(kind, scale, feature_dtype):
    ours, naive = bf16_errors(kind, scale, feature_dtype, "cpu")
    check_at_least_as_accurate(ours, naive, feature_dtype)


@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
def test_bf16_autocast_returns_fp32_loss_and_gradients_in_input_dtypes(kind):
    ours, _ = LOSSES[kind]
    image, text = (t.to(torch.bfloat16).requires_grad_(True) for t in clustered_features(64, 32))
    scale = torch.tensor(50.0, requires_grad=True)
    bias = torch.tensor(BIAS, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = ours(image, text, scale, bias)
        value.backward()  # inside the autocast region: the backward must not autocast either
    assert value.dtype == torch.float32
    assert image.grad is not None and image.grad.dtype == torch.bfloat16
    assert text.grad is not None and text.grad.dtype == torch.bfloat16
    assert scale.grad is not None and scale.grad.dtype == torch.float32
    ref = loss_and_grads(LOSSES[kind][1], image.detach(), text.detach(), 50.0, dtype=torch.float64, autocast=None)
    assert float((value.detach().double() - ref[0]).abs() / ref[0]) < 1e-5


@pytest.mark.parametrize("scale", [14.0, 100.0])
@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
def test_fp32_exact(kind, scale):
    ours, naive = LOSSES[kind]
    image, text = clustered_features()
    ref = loss_and_grads(naive, image, text, scale, dtype=torch.float64, autocast=None)
    got = loss_and_grads(ours, image, text, scale, dtype=torch.float32, autocast=None)
    errors = relative_errors(got, ref)
    assert max(errors.values()) <= 1e-5, errors
