"""Contrastive losses that take their distributed context as arguments."""

from clipray.losses.contrastive import (
    gather_with_grad,
    naive_softmax_loss,
    softmax_contrastive_loss,
)
from clipray.losses.sigmoid import naive_sigmoid_loss, sigmoid_contrastive_loss

__all__ = ["gather_with_grad", "naive_sigmoid_loss", "naive_softmax_loss", "sigmoid_contrastive_loss", "softmax_contrastive_loss"]
