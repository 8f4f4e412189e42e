"""The losses' precision policy: their logits and gradients are computed in fp32 under autocast.

Under `torch.autocast(dtype=bfloat16)` a matmul returns bf16, whose 8-bit mantissa leaves an
absolute error of up to 0.25 on a logit of 50-100 (typical CLIP logit scales): the softmax and
the temperature gradient then see noise of the order of the differences between logits. The
losses' autograd functions therefore switch autocast off, cast their inputs up to
`compute_dtype` (fp32, or fp64 when given fp64) and run forward and backward in it, returning
gradients in the dtypes of their inputs. docs/losses.md states what this costs.
"""

from __future__ import annotations

import contextlib

import torch


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """fp32, or the widest input float type if wider: never a 16-bit type."""
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def autocast_off(device: torch.device) -> contextlib.AbstractContextManager[object]:
    """No autocast on `device` inside: ops run in the dtype of their inputs.

    Used in forward AND backward: autograd runs a backward with the autocast state of the
    `.backward()` call, which may lie inside the caller's autocast region.
    """
    return torch.autocast(device_type=device.type, enabled=False)
