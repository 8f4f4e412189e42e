"""Per-batch data ops over dict-of-columns batches.

Each op reads and writes named columns, may drop rows (every drop is counted with a reason),
and does its expensive set-up once in `__init__`. `Preprocess` chains ops inside one Ray Data
stage so that intermediate columns (decoded PIL images) never cross the object store.
"""

from clipray.data.ops.base import Batch, DropStats, Op, keep_rows, op_registry

__all__ = ["Batch", "DropStats", "Op", "keep_rows", "op_registry"]
