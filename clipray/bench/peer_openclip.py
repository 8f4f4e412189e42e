"""The open_clip side of `clipray bench peer`, run by the reference environment's Python (.refenv/).

This file imports open_clip and never clipray: clipray's environment cannot import open_clip's
torchvision beside its CPU torch build, so `clipray bench peer` runs it as a script:

    .refenv/bin/python clipray/bench/peer_openclip.py params MODEL_DIR
        prints {"params": N}: the parameter count of open_clip's model built from
        MODEL_DIR/open_clip_config.json (`--model local-dir:MODEL_DIR`, as the trainer builds it)
    .refenv/bin/python clipray/bench/peer_openclip.py embed MODEL_DIR CHECKPOINT HELDOUT.npz OUT.npz
        loads open_clip_train's final checkpoint into that model and writes L2-normalised `image`
        and `text` embeddings of HELDOUT.npz's `images` (uint8 N x S x S x 3) and `texts`, using
        open_clip's own evaluation transform and tokenizer.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from PIL import Image


def build(model_dir: str) -> Any:
    return open_clip.create_model_and_transforms(f"local-dir:{model_dir}")


def params(model_dir: str) -> None:
    model, _, _ = build(model_dir)
    print(json.dumps({"params": sum(p.numel() for p in model.parameters())}))


def embed(model_dir: str, checkpoint: str, heldout: str, out: str) -> None:
    model, _, preprocess = build(model_dir)
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    # open_clip_train saves a DDP-wrapped model's keys with a `module.` prefix.
    model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    model.eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{model_dir}")
    data = np.load(heldout)
    with torch.no_grad():
        images = torch.stack([preprocess(Image.fromarray(a)) for a in data["images"]])
        image_emb = torch.cat([F.normalize(model.encode_image(images[i : i + 256]), dim=-1)
                               for i in range(0, len(images), 256)])
        ids = tokenizer([str(t) for t in data["texts"]])
        text_emb = F.normalize(model.encode_text(ids), dim=-1)
    np.savez(out, image=image_emb.numpy(), text=text_emb.numpy())


if __name__ == "__main__":
    commands: dict[str, Callable[..., None]] = {"params": params, "embed": embed}
    commands[sys.argv[1]](*sys.argv[2:])
