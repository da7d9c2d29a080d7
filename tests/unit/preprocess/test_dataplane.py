"""preprocess's data plane on its own: which hand-off a request gets, and the tensor it makes."""

import numpy as np
import pytest
from opentelemetry.trace import NoOpTracer

from ml_pipeline.core.errors import BadRequest
from ml_pipeline.observability.stages import StageTimer
from preprocess import imaging
from preprocess.dataplane import Preprocessor, image_to_tensor
from support.apps import make_settings
from support.data import COFFEE_JPG


def preprocessor(**settings):
    return Preprocessor(make_settings(**settings), model=None)  # the model client is not used here


def test_the_setting_chooses_the_hand_off_unless_a_request_may_and_does():
    assert preprocessor(transport="volume").transport(None) == "volume"
    assert preprocessor(allow_transport_override=True).transport("json") == "json"
    with pytest.raises(BadRequest) as refused:
        preprocessor(transport="volume").transport("json")
    assert refused.value.code == "transport_override_disabled"


def test_image_to_tensor_is_the_core_pipeline_with_a_span_per_stage():
    data = COFFEE_JPG.read_bytes()
    timer = StageTimer(NoOpTracer(), "preprocess")
    tensor = image_to_tensor(data, make_settings(), timer)
    expected = imaging.normalize(imaging.resize_crop(imaging.decode(data, 40_000_000, 16_000_000)))
    np.testing.assert_array_equal(tensor, expected)
    assert set(timer.timings_ms) == {"preprocess.decode", "preprocess.resize", "preprocess.normalize"}
