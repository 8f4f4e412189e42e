"""The logged pyfunc model, as MLflow's "models from code" reads it.

MLflow runs this file when the model is logged and again whenever it is loaded (`models:/NAME/V`),
with the logged copy of clipray on the path, and serves the object passed to `set_model`. Logging
a file instead of a pickled object keeps the model loadable by another Python or cloudpickle
release. Nothing in clipray imports this module: the `set_model` call below is the one thing
MLflow asks such a file to do when it runs.
"""

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel, PythonModelContext

from clipray.config import load_config
from clipray.models import build_trained_model
from clipray.models.checkpoint import read_state
from clipray.models.inputs import text_input
from clipray.tracking.model import predict_frame


class ClipPyfunc(PythonModel):
    """Embeds the rows of a DataFrame: column `image` (encoded bytes) and/or `text`, one per row."""

    def load_context(self, context: PythonModelContext) -> None:
        from pathlib import Path

        state = read_state(str(Path(context.artifacts["state"]).parent))  # the logged state.pt
        self.config = load_config(data=state["config"])
        self.model = build_trained_model(self.config.model, state["objective"]["model"])
        self.to_text = text_input(self.config)

    # A DataFrame hint gives MLflow no schema of its own: the logged signature stays the one used.
    def predict(self, context: PythonModelContext, model_input: pd.DataFrame, params: dict | None = None) -> np.ndarray:
        return predict_frame(self.model, self.config, model_input, self.to_text)


mlflow.models.set_model(ClipPyfunc())
