"""The champion gate of retraining scores both sides with one function on one evaluation set.

Two equal models (the same weights, loaded twice through the model loader) get identical numbers,
and the gate's rule keeps the incumbent on a tie; the decision is recorded in a real MLflow
registry (SQLite store). No Ray: the evaluation runs in this process, as retraining runs it.
"""

from __future__ import annotations

import copy

import torch
from mlflow.tracking import MlflowClient

from clipray.config import load_config, to_dict
from clipray.eval.loading import load_model
from clipray.eval.suite import evaluate
from clipray.eval.zeroshot import load_zeroshot_task
from clipray.models import build_model
from clipray.models.checkpoint import write_state
from clipray.schedule.retrain import CHAMPION, METRIC, decide_champion, promotes, score
from tests.conftest import ROOT


def test_equal_models_score_equal_and_a_tie_keeps_the_incumbent(tiny_data, tmp_path):
    config = load_config(ROOT / "pipelines/tiny/clip-tiny.yaml",
                         [f"data.source={tiny_data / 'train'}", f"eval.zeroshot_source={tiny_data / 'eval'}"])
    torch.manual_seed(0)
    weights = build_model(config.model).state_dict()
    for name in ("champion", "challenger"):  # two checkpoints with the same weights
        write_state({"objective": {"model": copy.deepcopy(weights)}, "config": to_dict(config), "step": 4},
                    str(tmp_path / name))
    champion = load_model(str(tmp_path / "champion")).model
    challenger = load_model(str(tmp_path / "challenger")).model
    challenger.train()  # the mode a model comes out of training in: evaluation must not depend on it

    task = load_zeroshot_task(config)  # decoded once, as `retrain` does, for both sides
    incumbent, new = score(champion, config, task), score(challenger, config, task)
    assert new == incumbent  # identical, not merely close
    assert challenger.training  # the evaluation restored the mode it found
    assert evaluate(champion, config, task).metrics[METRIC] == incumbent  # the gate's number is the evaluation's
    assert not promotes(new, incumbent) and promotes(new + 1e-6, incumbent) and promotes(new, None)

    # The decision in a real registry: version 2 ties with champion version 1, the alias stays.
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    client.create_registered_model("clip-tiny")
    for _ in range(2):
        client.create_model_version("clip-tiny", source=str(tmp_path / "champion"))
    client.set_registered_model_alias("clip-tiny", CHAMPION, "1")
    assert decide_champion(client, "clip-tiny", "2", new, incumbent) is False
    assert str(client.get_model_version_by_alias("clip-tiny", CHAMPION).version) == "1"
    assert client.get_model_version("clip-tiny", "2").tags["clipray.champion_decision"].startswith("kept incumbent")
