"""Credentials in URIs: one masking function, applied to every URI setting, error line and log."""

from __future__ import annotations

import io
import json
import logging
import socket
import typing

import pytest
from typer.testing import CliRunner

from bigbertha.cli import app
from bigbertha.core import logs
from bigbertha.core.masking import mask_credentials
from bigbertha.core.settings import Settings

runner = CliRunner()


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("redis://:pw@redis:6379/0", "redis://:***@redis:6379/0"),
        ("https://deploy:s3cr%40t@gitlab/group/repo", "https://deploy:***@gitlab/group/repo"),
        (
            "MLflow at http://admin:hunter2@mlflow.svc:5000: Connection refused",
            "MLflow at http://admin:***@mlflow.svc:5000: Connection refused",
        ),
        (
            "s3://b/k?X-Amz-Credential=AKIA&X-Amz-Signature=abc&v=1",
            "s3://b/k?X-Amz-Credential=***&X-Amz-Signature=***&v=1",
        ),
        (
            "http://h/x?password=pw;token=t&access_key=k",
            "http://h/x?password=***;token=***&access_key=***",
        ),
        ('{"uri": "http://u:p@h","b": "x@y"}', '{"uri": "http://u:***@h","b": "x@y"}'),
        # nothing to mask: ports, users without a password, e-mail addresses, plain settings
        ("http://mlflow:5000/api", "http://mlflow:5000/api"),
        ("postgresql://bigbertha@db/x", "postgresql://bigbertha@db/x"),
        ("write to ops@corp.internal at 12:30", "write to ops@corp.internal at 12:30"),
        ("max_new_tokens=128", "max_new_tokens=128"),
    ],
)
def test_mask_credentials(text: str, masked: str) -> None:
    assert mask_credentials(text) == masked


def _uri_settings() -> list[tuple[str, str]]:
    """Every string setting that can hold a URI (by type and by name), from the model itself."""
    found = []
    for section, field in Settings.model_fields.items():
        model = typing.cast(type, field.annotation)
        for key, sub in model.model_fields.items():
            text = f"{key} {sub.description}".lower()
            stringy = "str" in str(sub.annotation).lower()  # str, SecretStr, Location, ...
            if stringy and any(w in text for w in ("uri", "url", "endpoint", "api_base")):
                found.append((section, key))
    return found


def test_config_show_masks_the_password_of_every_uri_setting(clean_env, monkeypatch) -> None:
    uri_settings = _uri_settings()
    # The ones the issue named, so the discovery above cannot silently find nothing.
    for expected in [("mlflow", "tracking_uri"), ("milvus", "uri"), ("redis", "url")]:
        assert expected in uri_settings
    for section, key in uri_settings:
        uri = f"http://user:pw-{section}-{key}@{section}.svc:1234/x?token=tok-{section}-{key}"
        monkeypatch.setenv(f"BIGBERTHA_{section.upper()}__{key.upper()}", uri)
    for args in (["config", "show", "--json"], ["config", "show"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        assert "pw-" not in result.output and "tok-" not in result.output
    doc = json.loads(runner.invoke(app, ["config", "show", "--json"]).stdout)
    for section, key in uri_settings:
        shown = doc[section][key]["value"]
        assert shown.startswith(f"http://user:***@{section}.svc:1234/x?token=***"), (key, shown)


def test_an_error_line_never_shows_the_mlflow_password(clean_env, monkeypatch) -> None:
    with socket.socket() as s:  # a port nothing listens on: connection refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("BIGBERTHA_MLFLOW__TRACKING_URI", f"http://admin:hunter2@127.0.0.1:{port}")
    monkeypatch.setenv("BIGBERTHA_MLFLOW__REQUEST_RETRIES", "0")
    result = runner.invoke(app, ["promote", "--rollback"])
    assert result.exit_code == 69, result.output
    assert f"MLflow at http://admin:***@127.0.0.1:{port}" in result.stderr
    assert "hunter2" not in result.output


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_log_records_are_masked(fmt: str) -> None:
    stream = io.StringIO()
    logs.configure("INFO", fmt, stream)
    try:
        try:
            raise OSError("cannot reach redis://:hunter2@redis:6379/0")
        except OSError:
            logging.getLogger("t").exception(
                "lost http://u:hunter2@h/x", extra={"u": "s://a:hunter2@b"}
            )
    finally:
        logging.getLogger().handlers[:] = [
            h for h in logging.getLogger().handlers if not getattr(h, "_bigbertha", False)
        ]
    out = stream.getvalue()
    assert "hunter2" not in out and "http://u:***@h/x" in out and "redis://:***@redis" in out, out
