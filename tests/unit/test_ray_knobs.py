"""The Ray Data knob clipray sets for its reads, and that a user's own value wins."""

from __future__ import annotations

import os

from clipray.data.sources import FOOTER_ACTORS_ENV, _env_default


def test_footer_actor_default_is_scoped_and_yields_to_the_user(monkeypatch):
    monkeypatch.delenv(FOOTER_ACTORS_ENV, raising=False)
    with _env_default(FOOTER_ACTORS_ENV, "1"):
        assert os.environ[FOOTER_ACTORS_ENV] == "1"
    assert FOOTER_ACTORS_ENV not in os.environ  # not left behind for the next, larger listing
    monkeypatch.setenv(FOOTER_ACTORS_ENV, "16")
    with _env_default(FOOTER_ACTORS_ENV, "1"):
        assert os.environ[FOOTER_ACTORS_ENV] == "16"
    assert os.environ[FOOTER_ACTORS_ENV] == "16"
