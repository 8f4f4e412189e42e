"""Regenerate tests/data/openclip_golden_*.npz: embeddings computed by open_clip itself.

open_clip imports torchvision, which does not import beside clipray's CPU torch, so this runs in
a separate throw-away environment (a few GB; keep it out of the repository):

    python3.11 -m venv /tmp/ocref
    /tmp/ocref/bin/pip install torch torchvision open_clip_torch==3.3.0 numpy
    /tmp/ocref/bin/python tests/support/make_openclip_golden.py      # from the repository root
    rm -rf /tmp/ocref

The weights come from `seeded_weights.py` (NumPy only), so the test rebuilds identical tensors
without storing them. open_clip's own `build_model_from_openai_state_dict` infers the
architecture; its fp16 cast of OpenAI weights is switched off so that both sides run float32.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import open_clip
import open_clip.model as oc_model
from seeded_weights import seeded_inputs, seeded_state_dict

OUT = Path(__file__).resolve().parents[1] / "data"
SEED = 1234
TEXT_LENGTHS = (3, 10, 40)

# case -> (open_clip model config name, or None for the small ResNet below; number of images)
CASES = {
    "vitb32": ("ViT-B-32", 2),
    "rn_tiny": (None, 2),
}


def reference_model(name: str) -> torch.nn.Module:
    if name == "ViT-B-32":
        return open_clip.create_model("ViT-B-32", pretrained=None, force_quick_gelu=True)
    # A small ModifiedResNet with the RN50 layout (OpenAI heads = width * 32 // 64).
    return oc_model.CLIP(embed_dim=64,
                         vision_cfg=oc_model.CLIPVisionCfg(layers=(1, 2, 1, 1), width=16, image_size=64),
                         text_cfg=oc_model.CLIPTextCfg(context_length=77, vocab_size=49408, width=128, heads=2,
                                                       layers=2),
                         quick_gelu=True)


def main() -> None:
    oc_model.convert_weights_to_fp16 = lambda model: None  # keep float32 on both sides
    for case, (cfg_name, n_images) in CASES.items():
        shapes = {k: tuple(v.shape) for k, v in reference_model(cfg_name).state_dict().items()}
        sd = {k: torch.from_numpy(v) for k, v in seeded_state_dict(shapes, SEED).items()}
        model = oc_model.build_model_from_openai_state_dict(dict(sd), quick_gelu=True).float().eval()
        size = model.visual.image_size if isinstance(model.visual.image_size, int) else model.visual.image_size[0]
        images, ids = seeded_inputs(SEED, n_images, size, 77, 49408, TEXT_LENGTHS)
        with torch.no_grad():
            img = model.encode_image(torch.from_numpy(images)).numpy()
            txt = model.encode_text(torch.from_numpy(ids)).numpy()
        keys = np.array(list(shapes), dtype=object)
        shape_arr = np.array([",".join(map(str, s)) for s in shapes.values()], dtype=object)
        np.savez_compressed(OUT / f"openclip_golden_{case}.npz", keys=keys.astype(str), shapes=shape_arr.astype(str),
                            image_emb=img, text_emb=txt, seed=SEED, text_lengths=np.array(TEXT_LENGTHS),
                            open_clip_version=open_clip.__version__, torch_version=torch.__version__)
        print(case, img.shape, txt.shape, float(np.abs(img).mean()), float(np.abs(txt).mean()))


if __name__ == "__main__":
    main()
