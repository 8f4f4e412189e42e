"""Embed images and texts with open_clip 3.3.0 itself, from what `clipray export` wrote.

Runs in the reference environment (`make reference-env`, .refenv/), as a subprocess of
tests/unit/test_export.py, because clipray's environment cannot import open_clip's torchvision:

    .refenv/bin/python tests/support/open_clip_embed.py INPUTS.json local-dir:OUT_DIR=A.npz openai:FILE=B.npz

INPUTS.json: {"images": [PNG paths], "texts": [...], "pixels": NPY path of normalised (N, 3, S, S)
float32 images}. The folder format goes through open_clip's own loader, image preprocessing and
tokenizer; the OpenAI file through `load_openai_model` and open_clip's default preprocessing.
Each output .npz: L2-normalised `image` (from the PNG files), `pixels` (from the given tensors) and `text`
embeddings, and the token ids open_clip used.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from PIL import Image


def main(inputs_path: str, *jobs: str) -> None:
    with open(inputs_path) as f:
        inputs = json.load(f)
    for job in jobs:  # one process for all: importing torch and open_clip is most of the time
        model_ref, _, out_path = job.rpartition("=")
        embed(model_ref, inputs, out_path)


def embed(model_ref: str, inputs: dict, out_path: str) -> None:
    if model_ref.startswith("openai:"):
        # build_model_from_openai_state_dict rounds the matrices to float16 (as OpenAI released
        # them) before load_openai_model casts back to float32; switched off, as for the other
        # open_clip goldens, so that the comparison sees the layout and not that rounding.
        open_clip.model.convert_weights_to_fp16 = lambda model: None
        model = open_clip.load_openai_model(model_ref.removeprefix("openai:"), precision="fp32", device="cpu")
        size = model.visual.image_size
        preprocess = open_clip.image_transform(size, is_train=False)
        context_length = model.context_length
        tokenizer = lambda texts: open_clip.tokenize(texts, context_length=context_length)  # noqa: E731
    else:
        model, _, preprocess = open_clip.create_model_and_transforms(model_ref)
        tokenizer = open_clip.get_tokenizer(model_ref)
    model.eval()
    with torch.no_grad():
        images = torch.stack([preprocess(Image.open(p)) for p in inputs["images"]])
        ids = tokenizer(inputs["texts"])
        out = {"image": F.normalize(model.encode_image(images), dim=-1).numpy(),
               "pixels": F.normalize(model.encode_image(torch.from_numpy(np.load(inputs["pixels"]))), dim=-1).numpy(),
               "text": F.normalize(model.encode_text(ids), dim=-1).numpy(), "ids": ids.numpy()}
    np.savez(out_path, **out)


if __name__ == "__main__":
    main(*sys.argv[1:])
