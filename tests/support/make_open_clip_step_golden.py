"""Regenerate tests/data/open_clip_step_golden.npz: K AdamW steps of open_clip's own trainer.

The reference is open_clip_train 3.3.0's `train_one_epoch` itself (its zero_grad / forward /
`ClipLoss` / backward / `clip_grad_norm_` / step / logit-scale clamp to ln 100), driven by its
`cosine_lr` warm-up + cosine schedule and its `create_loss`, with AdamW parameter groups built by
the rule of `open_clip_train/main.py` (no weight decay where `p.ndim < 2` or the name contains
"bn", "ln", "bias" or "logit_scale"). One process, and two gloo processes under DDP with
`--local-loss --gather-with-grad` (open_clip's exact multi-GPU setting; its default global loss
without gradient gathering scales the towers' gradients by 1/world size).

open_clip imports torchvision, which does not import beside clipray's CPU torch, so this runs in
the reference environment (`make reference-env` builds it in .refenv/), from the repository root:

    make reference-env
    .refenv/bin/python tests/support/make_open_clip_step_golden.py

Weights and batches are derived from a seed with NumPy only (`seeded_weights.py`, `seeded_batches`
below), so `tests/unit/test_open_clip_parity.py` rebuilds the same inputs without storing them;
the file holds the per-step losses, learning rates and logit scales, the parameter names open_clip
keeps out of weight decay, and the final weights of both runs (about 0.5 MB).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

try:
    from tests.support.seeded_weights import seeded_state_dict
except ImportError:  # run as a script: the repository root is not on the path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from seeded_weights import seeded_state_dict

OUT = Path(__file__).resolve().parents[1] / "data" / "open_clip_step_golden.npz"
SEED = 2026
STEPS = 5  # K optimizer steps, one fresh batch each
GLOBAL_BATCH = 8
WORLD_SIZES = (1, 2)
MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI's, clipray's image.mean/std default
STD = (0.26862954, 0.26130258, 0.27577711)

# A tiny ViT CLIP in open_clip's terms (heads = width // head_width); OpenAI key layout.
EMBED_DIM = 16
VISION = {"image_size": 16, "patch_size": 8, "width": 32, "layers": 2, "head_width": 16, "mlp_ratio": 4.0}
TEXT = {"context_length": 16, "vocab_size": 256, "width": 32, "heads": 2, "layers": 2, "mlp_ratio": 4.0}
QUICK_GELU = True

# open_clip_train flags (and the clipray settings the test maps them to).
LR = 2e-3
WD = 0.2
BETAS = (0.9, 0.98)
EPS = 1e-6
WARMUP = 2
GRAD_CLIP = 1.0  # below the gradient norm of the first steps, so clipping is active
# Just above ln(100): the clamp after the first step pulls it back, so the clamp is exercised.
INIT_LOGIT_SCALE = math.log(100) + 0.01


def seeded_batches(seed: int = SEED) -> list[dict[str, np.ndarray]]:
    """STEPS global batches: uint8 images (N, S, S, 3) as clipray's pipeline delivers them, and
    token ids (N, L): SOT, random ids, EOT (the largest id), zero padding."""
    rng = np.random.default_rng([seed, 7])
    s, length, vocab = VISION["image_size"], TEXT["context_length"], TEXT["vocab_size"]
    out = []
    for _ in range(STEPS):
        images = rng.integers(0, 256, (GLOBAL_BATCH, s, s, 3), dtype=np.uint8)
        ids = np.zeros((GLOBAL_BATCH, length), dtype=np.int64)
        for i, n in enumerate(rng.integers(1, length - 1, GLOBAL_BATCH)):
            ids[i, 0] = vocab - 2
            ids[i, 1 : 1 + n] = rng.integers(1, vocab - 2, n)
            ids[i, 1 + n] = vocab - 1
        out.append({"image": images, "tokens": ids})
    return out


def initial_state_dict(shapes: dict[str, tuple[int, ...]], seed: int = SEED) -> dict[str, np.ndarray]:
    sd = seeded_state_dict(shapes, seed)
    sd["logit_scale"] = np.asarray(INIT_LOGIT_SCALE, dtype=np.float32).reshape(shapes["logit_scale"])
    return sd


def open_clip_excludes_from_decay(name: str, ndim: int) -> bool:
    """open_clip_train/main.py (3.3.0): gains, biases and the temperature get no weight decay."""
    return ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name


# ---- everything below runs only in the reference environment -----------------------------------

def _reference_model() -> Any:
    import open_clip.model as oc_model

    return oc_model.CLIP(embed_dim=EMBED_DIM, vision_cfg=oc_model.CLIPVisionCfg(**VISION),
                         text_cfg=oc_model.CLIPTextCfg(**TEXT), quick_gelu=QUICK_GELU, output_dict=True)


class _Loader:
    """What train_one_epoch reads of open_clip_train's DataInfo: an iterable of (images, texts)."""

    def __init__(self, batches: list[tuple[Any, Any]]) -> None:
        self.batches = batches
        self.num_batches = len(batches)
        self.num_samples = len(batches) * len(batches[0][0])

    def __iter__(self) -> Any:
        return iter(self.batches)


class _Data:
    def __init__(self, loader: _Loader) -> None:
        self.dataloader = loader

    def set_epoch(self, epoch: int) -> None:
        pass


class _RecordingLoss:
    """open_clip's loss module, recording each step's loss, learning rate and logit scale."""

    def __init__(self, loss: Any, optimizer: Any) -> None:
        self.loss, self.optimizer = loss, optimizer
        self.losses: list[float] = []
        self.lrs: list[float] = []
        self.scales: list[float] = []

    def __call__(self, **kwargs: Any) -> Any:
        out = self.loss(**kwargs)
        self.losses.append(float(out["contrastive_loss"].detach()))
        self.lrs.append(float(self.optimizer.param_groups[0]["lr"]))
        self.scales.append(float(kwargs["logit_scale"].detach().log()))
        return out


def run_open_clip(rank: int, world_size: int) -> dict[str, Any]:
    """STEPS steps of open_clip_train's train_one_epoch on this rank's rows of each batch."""
    import argparse

    import torch
    from open_clip import create_loss
    from open_clip_train.scheduler import cosine_lr
    from open_clip_train.train import train_one_epoch
    from torchvision.transforms import Normalize

    torch.manual_seed(0)
    model = _reference_model()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    model.load_state_dict({k: torch.from_numpy(v) for k, v in initial_state_dict(shapes).items()})
    named = list(model.named_parameters())
    no_decay = [p for n, p in named if open_clip_excludes_from_decay(n, p.ndim)]
    decay = [p for n, p in named if not open_clip_excludes_from_decay(n, p.ndim)]
    optimizer = torch.optim.AdamW([{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": WD}],
                                  lr=LR, betas=BETAS, eps=EPS)
    args = argparse.Namespace(
        device="cpu", precision="fp32", accum_freq=1, distill=False, skip_scheduler=False, horovod=False,
        grad_clip_norm=GRAD_CLIP, log_every_n_steps=100, rank=rank, local_rank=rank, world_size=world_size,
        batch_size=GLOBAL_BATCH // world_size, wandb=False, model="ViT-tiny", siglip=False,
        local_loss=world_size > 1, gather_with_grad=world_size > 1)
    loss = _RecordingLoss(create_loss(args), optimizer)
    normalize = Normalize(MEAN, STD)  # torchvision's ToTensor + Normalize, as open_clip's preprocess
    per = GLOBAL_BATCH // world_size
    batches = []
    for b in seeded_batches():
        rows = slice(rank * per, (rank + 1) * per)
        images = normalize(torch.from_numpy(b["image"][rows]).permute(0, 3, 1, 2).float().div(255))
        batches.append((images, torch.from_numpy(b["tokens"][rows])))
    scheduler = cosine_lr(optimizer, LR, WARMUP, STEPS)
    trained = model
    if world_size > 1:
        trained = torch.nn.parallel.DistributedDataParallel(model)
    train_one_epoch(trained, {"train": _Data(_Loader(batches))}, loss, 0, optimizer, None, scheduler, None, args)
    return {"losses": loss.losses, "lrs": loss.lrs, "scales": loss.scales,
            "final": {k: v.detach().numpy().copy() for k, v in model.state_dict().items()},
            "shapes": shapes, "no_decay": [n for n, p in named if open_clip_excludes_from_decay(n, p.ndim)]}


def _worker(rank: int, world_size: int, init_file: str, out_file: str) -> None:
    import pickle

    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    torch.set_num_threads(1)
    result = run_open_clip(rank, world_size)
    losses = torch.tensor(result["losses"])
    dist.all_reduce(losses)  # each rank's local loss; their mean is the batch loss
    result["losses"] = (losses / world_size).tolist()
    if rank == 0:
        Path(out_file).write_bytes(pickle.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    import logging
    import pickle
    import tempfile

    import open_clip
    import torch
    import torch.multiprocessing as mp

    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    arrays: dict[str, Any] = {}
    for world_size in WORLD_SIZES:
        if world_size == 1:
            result = run_open_clip(0, 1)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "out.pkl"
                mp.spawn(_worker, args=(world_size, str(Path(tmp) / "init"), str(out)), nprocs=world_size, join=True)
                result = pickle.loads(out.read_bytes())
        tag = f"w{world_size}"
        arrays[f"{tag}_losses"] = np.array(result["losses"], dtype=np.float64)
        arrays[f"{tag}_lrs"] = np.array(result["lrs"], dtype=np.float64)
        arrays[f"{tag}_logit_scales"] = np.array(result["scales"], dtype=np.float64)
        for k, v in result["final"].items():
            arrays[f"{tag}_final/{k}"] = v
        print(f"world size {world_size}: losses {np.round(result['losses'], 6).tolist()} "
              f"lrs {result['lrs']} log scales {np.round(result['scales'], 6).tolist()}")
    shapes = result["shapes"]
    np.savez_compressed(
        OUT, keys=np.array(list(shapes), dtype=str),
        shapes=np.array([",".join(map(str, s)) for s in shapes.values()], dtype=str),
        no_decay=np.array(result["no_decay"], dtype=str), seed=SEED, steps=STEPS,
        open_clip_version=open_clip.__version__, torch_version=torch.__version__, **arrays)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
