"""Measuring the losses' memory: the peak of live tensor storage over a block of code.

Used by `clipray bench loss` and by the tests of the losses' memory claims. Unlike the process's
resident set it is exact and repeatable: it counts what the code keeps alive, not what the
allocator or the communication library hold, and does not depend on the machine's load.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Any

import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode


class TensorMemory(TorchDispatchMode):
    """While active, tracks the bytes of tensor storage created by ops and still alive: `live`
    now, `peak` the most at once. Storages of `existing` tensors (inputs) are not counted.

    Autograd runs a CPU backward on the calling thread with the caller's dispatch modes, so a
    `.backward()` inside the block is measured too.
    """

    def __init__(self, existing: Iterable[torch.Tensor] = ()) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._sizes: dict[int, int] = {t.untyped_storage().data_ptr(): 0 for t in existing}

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._track(t)
        return out

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key, size = storage.data_ptr(), storage.nbytes()
        if size == 0 or key in self._sizes:  # a view, an in-place result or an input
            return
        self._sizes[key] = size
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.live -= self._sizes.pop(key, 0)
