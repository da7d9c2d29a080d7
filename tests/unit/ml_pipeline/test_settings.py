"""The settings models: environment parsing, validation, the prefix, each service seeing only its
own settings, and the configuration page (docs/configuration.md) kept in sync with all of it."""

import re
import runpy

import pytest
from pydantic import ValidationError

from ml_pipeline.settings import (
    ENV_PREFIX_VARIABLE,
    SETTINGS_BY_SERVICE,
    ModelSettings,
    PipelineSettings,
    PostprocessSettings,
    PreprocessSettings,
    load_settings,
)
from support.data import ROOT
from support.docs import page

TABLE_ROW = re.compile(r"^\| `([A-Z0-9_]+)` \| ([a-z, ]+) \| (.*?) \| (.*) \|$", re.M)
GENERATOR = runpy.run_path(str(ROOT / "scripts" / "settings_table.py"))


def documented_rows() -> dict[str, tuple[str, str, str]]:
    rows = TABLE_ROW.findall(page("configuration.md"))
    assert len(rows) == len({name for name, *_ in rows}), "a variable documented twice"
    return {name: (readers, default, meaning) for name, readers, default, meaning in rows}


def test_the_configuration_page_names_every_variable_who_reads_it_and_what_it_means():
    rows = documented_rows()
    fields = PipelineSettings.model_fields
    assert set(rows) == {name.upper() for name in fields}
    for name, field in fields.items():
        readers = ", ".join(service for service, model in SETTINGS_BY_SERVICE.items() if name in model.model_fields)
        documented_readers, _, meaning = rows[name.upper()]
        assert (documented_readers, meaning) == (readers, field.description), name


def test_the_configuration_page_is_what_the_generator_writes_from_the_models():
    """python scripts/settings_table.py wrote the tables from these very models: defaults included."""
    text = page("configuration.md")
    assert GENERATOR["render"](text) == text, (
        "docs/configuration.md is not current: run python scripts/settings_table.py"
    )


def test_documented_defaults_are_the_models_and_composes_values():
    rows = documented_rows()
    for name, field in PipelineSettings.model_fields.items():
        default = rows[name.upper()][1]
        if field.default_factory is None and field.default is not None:
            shown = str(field.default).lower() if isinstance(field.default, bool) else str(field.default)
            assert default.startswith(f"`{shown}`"), (name, default)
    compose = (ROOT / "docker-compose.yml").read_text()
    for name, note in GENERATOR["NOTES"].items():
        assert name in PipelineSettings.model_fields, name
        for value in re.findall(r"compose: `([^`]+)`", note):
            assert value in compose, f"{name}: docker-compose.yml does not set {value}"


def test_each_service_reads_only_what_it_uses():
    assert "model_backend" not in PreprocessSettings.model_fields and "model_backend" in ModelSettings.model_fields
    assert (
        "preprocess_url" not in PreprocessSettings.model_fields and "preprocess_url" in PostprocessSettings.model_fields
    )
    assert "max_upload_bytes" not in ModelSettings.model_fields  # the model takes tensors, never uploads
    assert {"max_in_flight", "otel_exporter_otlp_endpoint"} <= set(ModelSettings.model_fields)  # every service's
    every = set().union(*(model.model_fields for model in SETTINGS_BY_SERVICE.values()))
    assert every == set(PipelineSettings.model_fields)  # no field nobody reads
    assert all(issubclass(PipelineSettings, model) for model in SETTINGS_BY_SERVICE.values())


def test_environment_variables_configure_the_services(monkeypatch):
    monkeypatch.setenv("MODEL_BACKEND", "random")
    monkeypatch.setenv("MAX_UPLOAD_BYTES", "1234")
    monkeypatch.setenv("TRACING_ENABLED", "false")
    settings = PipelineSettings()
    assert (settings.model_backend, settings.max_upload_bytes, settings.tracing_enabled) == ("random", 1234, False)


def test_a_prefix_keeps_services_apart_in_one_environment(monkeypatch):
    monkeypatch.setenv("MAX_IN_FLIGHT", "3")
    monkeypatch.setenv("MODEL_MAX_IN_FLIGHT", "5")
    monkeypatch.setenv("MODEL_MAX_BATCH", "4")
    assert load_settings(ModelSettings).max_in_flight == 3  # no prefix: the plain names
    monkeypatch.setenv(ENV_PREFIX_VARIABLE, "MODEL_")
    model = load_settings(ModelSettings)
    assert (model.max_in_flight, model.max_batch) == (5, 4)
    monkeypatch.setenv(ENV_PREFIX_VARIABLE, "PRE_")
    assert (
        load_settings(PreprocessSettings).max_in_flight == 8
    )  # under a prefix, MAX_IN_FLIGHT is not read: the default


@pytest.mark.parametrize(
    "name, value", [("MODEL_BACKEND", "tensorflow"), ("MAX_UPLOAD_BYTES", "-1"), ("ORT_INTRA_OP_THREADS", "0")]
)
def test_bad_values_fail_at_startup_with_the_field_named(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=name.lower()):
        PipelineSettings()
