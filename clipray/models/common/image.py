"""Image tensors for the model: uint8 HWC batches from the data plane, normalised on device."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from clipray.text.encoding import TextEncoding


def to_model_input(images_BHWC: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> normalised float (B, 3, H, W) on the tensor's device."""
    x = images_BHWC.permute(0, 3, 1, 2).to(dtype).div_(255.0)
    m = torch.tensor(mean, device=x.device, dtype=dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=dtype).view(1, 3, 1, 1)
    return x.sub_(m).div_(s)


def text_tower_input(encoding: TextEncoding, values: torch.Tensor, mean: Sequence[float],
                     std: Sequence[float]) -> torch.Tensor:
    """The text encoding's column as the text tower reads it: ids as int64, or captions rendered
    as uint8 images (CLIPPO), normalised like the photos."""
    return to_model_input(values, mean, std) if encoding.is_image else values.long()
