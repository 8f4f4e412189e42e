"""K AdamW steps of clipray's training loop equal open_clip's own training step (one process).

Both sides start from the same OpenAI-layout weights and see the same preprocessed batches
(`tests/support/make_open_clip_step_golden.py` derives them from a seed). The reference,
tests/data/open_clip_step_golden.npz, is open_clip_train 3.3.0's `train_one_epoch` with its
`ClipLoss`, weight-decay rule, `cosine_lr`, gradient clipping and logit-scale clamp; the
clipray side is the real `train_loop` under `LocalContext`, started from `model.init_from` and
configured with the settings docs/open_clip.md names. The 2-worker case is
tests/distributed/test_open_clip_parity_gloo.py. Regenerate the golden file with
`.refenv/bin/python tests/support/make_open_clip_step_golden.py` (after `make reference-env`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipray.config import PipelineConfig, load_config
from clipray.models import build_model
from clipray.models.checkpoint import read_state
from clipray.models.clip.presets import preset
from clipray.train.context import LocalContext
from clipray.train.loop import train_loop
from clipray.train.optim import build_optimizer, lr_factor
from tests.support import make_open_clip_step_golden as ref

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "open_clip_step_golden.npz"
TOL = 1e-5  # relative, per step and per weight tensor
KEY_BIAS_NOISE = 1e-4  # absolute: see _without_key_bias


def golden() -> dict[str, Any]:
    g = np.load(GOLDEN)
    return {k: g[k] for k in g.files}


def golden_shapes(g: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(int(x) for x in s.split(",") if x) for k, s in zip(g["keys"], g["shapes"])}


def write_init(g: dict[str, Any], path: Path) -> str:
    """The initial weights both sides start from, as an OpenAI-layout state dict file."""
    sd = {k: torch.from_numpy(v) for k, v in ref.initial_state_dict(golden_shapes(g), int(g["seed"])).items()}
    torch.save(sd, path)
    return str(path)


def open_clip_config(world_size: int, init_from: str) -> PipelineConfig:
    """The clipray settings that reproduce open_clip_train's step (docs/open_clip.md)."""
    v, t = ref.VISION, ref.TEXT
    data = {
        "name": "open-clip-parity",
        "image": {"mean": list(ref.MEAN), "std": list(ref.STD)},
        "model": {"family": "clip", "embed_dim": ref.EMBED_DIM, "quick_gelu": ref.QUICK_GELU, "init_from": init_from,
                  "max_logit_scale": 100.0,  # open_clip clamps the log scale to [0, ln 100] after each step
                  "vision": {"image_size": v["image_size"], "patch_size": v["patch_size"], "width": v["width"],
                             "layers": v["layers"], "heads": v["width"] // v["head_width"],
                             "mlp_ratio": v["mlp_ratio"]},
                  "text": {k: t[k] for k in ("context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio")}},
        "optim": {"lr": ref.LR, "weight_decay": ref.WD, "betas": list(ref.BETAS), "eps": ref.EPS,
                  "warmup_steps": ref.WARMUP, "schedule": "cosine", "min_lr_ratio": 0.0},
        "train": {"steps": ref.STEPS, "global_batch_size": ref.GLOBAL_BATCH, "num_workers": world_size,
                  "grad_clip": ref.GRAD_CLIP, "precision": "fp32", "loss": "softmax", "micro_batches": 1,
                  "log_every": 1, "checkpoint_every": ref.STEPS},
    }
    return load_config(data=data)


def rank_batches(rank: int, world_size: int):
    """This rank's rows of each seeded global batch, as clipray's collate delivers them."""
    per = ref.GLOBAL_BATCH // world_size
    batches = [{k: torch.from_numpy(v[rank * per : (rank + 1) * per]) for k, v in b.items()}
               for b in ref.seeded_batches()]
    return lambda epoch: iter(batches)


class Recorder:
    run_id = None

    def __init__(self) -> None:
        self.steps: dict[int, dict[str, float]] = {}

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.steps[step] = dict(metrics)


def rel(a: np.ndarray | float, b: np.ndarray | float) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def compare(g: dict[str, Any], world_size: int, steps: dict[int, dict[str, float]],
            final: dict[str, torch.Tensor]) -> dict[str, float]:
    """Assert clipray's run equals open_clip's; returns the largest relative differences."""
    tag = f"w{world_size}"
    k = int(g["steps"])
    assert sorted(steps) == list(range(1, k + 1))
    losses = np.array([steps[s]["train/loss"] for s in range(1, k + 1)])
    loss_diff = [rel(a, b) for a, b in zip(losses, g[f"{tag}_losses"])]
    assert max(loss_diff) <= TOL, f"per-step losses {losses} vs open_clip {g[f'{tag}_losses']}"
    scales = np.log([steps[s]["train/logit_scale"] for s in range(1, k + 1)])
    assert np.allclose(scales, g[f"{tag}_logit_scales"], rtol=TOL, atol=0), (scales, g[f"{tag}_logit_scales"])
    assert steps[1]["train/grad_norm"] > ref.GRAD_CLIP  # clipping really scaled the first step
    keys = {key.split("/", 1)[1] for key in g if key.startswith(f"{tag}_final/")}
    assert set(final) == keys
    weight_diff, update_diff = {}, {}
    init = ref.initial_state_dict(golden_shapes(g), int(g["seed"]))
    for name in sorted(keys):
        got, want, start = final[name].numpy(), g[f"{tag}_final/{name}"], init[name]
        if name.endswith("attn.in_proj_bias"):
            got, want, start = (_without_key_bias(got, want, start, name))
        weight_diff[name] = rel(got, want)
        # The update itself (final - initial): a far stricter view than the weights.
        update_diff[name] = rel(got - start, want - start)
    worst = max(weight_diff, key=weight_diff.__getitem__)
    assert weight_diff[worst] <= TOL, f"{worst}: relative difference {weight_diff[worst]:.2e}"
    worst = max(update_diff, key=update_diff.__getitem__)
    assert update_diff[worst] <= 10 * TOL, f"{worst}: update differs by {update_diff[worst]:.2e} (relative)"
    assert min(rel(g[f"{tag}_final/{n}"], init[n]) for n in keys if n != "logit_scale") > 1e-4  # weights moved
    return {"loss": max(loss_diff), "weights": max(weight_diff.values()), "update": max(update_diff.values())}


def _without_key_bias(got: np.ndarray, want: np.ndarray, start: np.ndarray,
                      name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The query and value thirds of an attention block's in_proj_bias; the key third only bounded.

    Adding a constant to every key shifts each query's logits by one number, which softmax
    ignores: the key bias has no gradient. Its float-rounding gradient (1e-9) still gets AdamW
    updates (about lr * g / (|g| + eps)), different noise in each implementation; both must stay
    noise-sized, far below what a real gradient moves (about 1e-2 here).
    """
    w = len(got) // 3
    for side in (got, want):
        moved = float(np.abs(side[w : 2 * w] - start[w : 2 * w]).max())
        assert moved < KEY_BIAS_NOISE, f"{name}: key bias moved {moved:.1e}, more than rounding noise"
    keep = np.r_[0:w, 2 * w : 3 * w]
    return got[keep], want[keep], start[keep]


def test_schedule_and_weight_decay_groups_are_open_clips():
    """cosine_lr's warm-up + cosine and main.py's no-decay rule, before any training."""
    g = golden()
    assert str(g["open_clip_version"]) == "3.3.0"
    cfg = open_clip_config(1, "")
    for step, lr in enumerate(g["w1_lrs"]):
        assert math.isclose(ref.LR * lr_factor(step, cfg.optim, ref.STEPS), lr, rel_tol=1e-12), step
    model = build_model(cfg.model)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = {pg["weight_decay"]: {names[id(p)] for p in pg["params"]} for pg in build_optimizer(model, cfg.optim)
              .param_groups}
    assert groups[0.0] == set(g["no_decay"].tolist())
    assert groups[ref.WD] == set(names.values()) - set(g["no_decay"].tolist())
    # A ModifiedResNet tower (BatchNorm, attention pool) too, by open_clip's rule on its names.
    rn = build_model(preset("rn-tiny"))
    rn_names = {id(p): n for n, p in rn.named_parameters()}
    no_decay = [p for pg in build_optimizer(rn, cfg.optim).param_groups if pg["weight_decay"] == 0 for p in pg["params"]]
    assert {rn_names[id(p)] for p in no_decay} == {n for n, p in rn.named_parameters()
                                                   if ref.open_clip_excludes_from_decay(n, p.ndim)}
    assert any("bn" in rn_names[id(p)] for p in no_decay)


def test_k_steps_equal_open_clip_train(tmp_path):
    g = golden()
    cfg = open_clip_config(1, write_init(g, tmp_path / "init.pt"))
    rec = Recorder()
    train_loop(cfg, LocalContext(rank_batches(0, 1), str(tmp_path / "ckpt")), rec)
    final = read_state(str(tmp_path / "ckpt"))["objective"]["model"]
    diffs = compare(g, 1, rec.steps, final)
    print(f"1 worker vs open_clip: max relative diff {diffs}")
