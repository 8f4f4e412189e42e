"""open_clip's reference CLIP tokenizer (`SimpleTokenizer`), for parity tests and benchmarks.

Its `tokenizer.py` is loaded by file path from the installed open_clip_torch wheel: importing the
open_clip package would import torchvision, which clipray does not depend on.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

_MODULE = "_clipray_open_clip_tokenizer"


def load_reference_module() -> ModuleType:
    if _MODULE in sys.modules:
        return sys.modules[_MODULE]
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the reference tokenizer needs open_clip_torch: "
                                  "pip install --no-deps open_clip_torch==3.3.0 (make install does it)")
    path = Path(next(iter(spec.submodule_search_locations))) / "tokenizer.py"
    module_spec = importlib.util.spec_from_file_location(_MODULE, path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    sys.modules[_MODULE] = module
    return module


def reference_tokenizer(context_length: int = 77):
    """A fresh open_clip `SimpleTokenizer` (empty BPE cache)."""
    return load_reference_module().SimpleTokenizer(context_length=context_length)
