"""The settings model: environment parsing, validation, and the README table kept in sync."""

import re

import pytest
from pydantic import ValidationError

from support.data import ROOT
from ml_pipeline.settings import Settings


def test_every_field_is_documented_in_the_model_and_the_readme():
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"^\| `([A-Z0-9_]+)` \|", readme, flags=re.M))
    fields = {name.upper() for name in Settings.model_fields}
    assert fields <= documented, f"README's configuration table misses {sorted(fields - documented)}"
    assert all(field.description for field in Settings.model_fields.values())


def test_environment_variables_configure_the_services(monkeypatch):
    monkeypatch.setenv("MODEL_BACKEND", "random")
    monkeypatch.setenv("MAX_UPLOAD_BYTES", "1234")
    monkeypatch.setenv("TRACING_ENABLED", "false")
    settings = Settings()
    assert (settings.model_backend, settings.max_upload_bytes, settings.tracing_enabled) == ("random", 1234, False)


@pytest.mark.parametrize("name, value", [("MODEL_BACKEND", "tensorflow"), ("MAX_UPLOAD_BYTES", "-1"), ("ORT_INTRA_OP_THREADS", "0")])
def test_bad_values_fail_at_startup_with_the_field_named(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=name.lower()):
        Settings()
