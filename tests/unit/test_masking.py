"""Secrets are masked by key name, inside URIs, and wherever a secret environment value appears."""

from __future__ import annotations

from clipray.tracking.tracker import MASK, mask_secrets, mask_text


def test_env_secret_values_are_masked_anywhere(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-aws-value")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "ray-token-abcdef")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "mlflow-pw-123456")
    monkeypatch.setenv("SHORT_TOKEN", "1")  # too short to mask without mangling other text
    params = {
        "tracking.run_name": "nightly-ray-token-abcdef",
        "data.source": "s3://bucket/x?sig=s3cr3t-aws-value",
        "data.endpoint_url": "http://admin:hunter22@minio:9000",
        "x.api_key": "anything",
        "x.list": ["ok", "pw=mlflow-pw-123456"],
        "train.steps": 10,
        "text_encoding.tokenizer": "words",
        "x.auth_token": "abc",
    }
    out = mask_secrets(params)
    assert out["tracking.run_name"] == f"nightly-{MASK}"
    assert out["data.source"] == f"s3://bucket/x?sig={MASK}"
    assert out["data.endpoint_url"] == f"http://admin:{MASK}@minio:9000"
    assert out["x.api_key"] == MASK and out["x.list"] == ["ok", f"pw={MASK}"] and out["train.steps"] == 10
    assert out["text_encoding.tokenizer"] == "words" and out["x.auth_token"] == MASK  # a tokenizer is no secret
    assert mask_text("step 1 of 10") == "step 1 of 10"
