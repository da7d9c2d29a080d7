"""The tensor hand-off module: encodings and the shared-volume file rules."""

import os
import time

import numpy as np
import pytest

from ml_pipeline.core import codec, handoff, wire
from ml_pipeline.core.errors import BadRequest, UnsupportedMediaType

LIMIT = 700_000


def tensor(seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (1, 3, 224, 224)).astype(np.float32)


# --------------------------------------------------------------------------- encodings


def test_json_round_trip_is_exact():
    x = tensor()
    np.testing.assert_array_equal(handoff.decode_json(handoff.encode_json(x)), x)


@pytest.mark.parametrize(
    "body, words",
    [
        (b"[1, 2]", "send {"),
        (b'{"shape": [2], "dtype": "float64", "data": [1, 2]}', "float64"),
        (b'{"shape": [3], "dtype": "float32", "data": [1, 2]}', "not the declared"),
        (b'{"shape": [2, 2], "dtype": "float32", "data": [[1, 2], [3]]}', "regular nested list"),
        (b'{"shape": [1], "dtype": "float32", "data": ["x"]}', "regular nested list"),
        (b"not json", "send {"),
    ],
)
def test_malformed_json_tensors_are_400(body, words):
    with pytest.raises(BadRequest, match=words):
        handoff.decode_json(body)


def test_a_json_tensor_is_counted_against_the_budget_before_it_is_parsed():
    budget = codec.JsonBudget.for_shape((1, 3, 224, 224))
    x = tensor()
    np.testing.assert_array_equal(handoff.decode_json(handoff.encode_json(x), budget), x)  # the largest fits
    hostile = b'{"shape": [1, 3, 224, 224], "dtype": "float32", "data": [' + b"[]," * 1_000_000 + b"[]]}"
    with pytest.raises(BadRequest, match="more lists") as refused:
        handoff.decode_json(hostile, budget)
    assert refused.value.code == "invalid_tensor"


@pytest.mark.parametrize(
    "body",
    [
        b'{"shape": [1], "dtype": {"a": [true]}, "data": [1]}',
        b'{"shape": {"a": null}, "dtype": "float32", "data": [1]}',
    ],
)
def test_json_tensor_messages_show_the_json_sent_not_a_python_repr(body):
    with pytest.raises(BadRequest) as refused:
        handoff.decode_json(body)
    assert "True" not in refused.value.message and "None" not in refused.value.message
    assert "true" in refused.value.message or "null" in refused.value.message


# --------------------------------------------------------------------------- volume files


def test_write_then_read_and_the_write_is_atomic(tmp_path):
    x = tensor()
    name, size = handoff.write_tensor(tmp_path, x)
    assert os.listdir(tmp_path) == [name] and size == len(codec.encode(x))  # no temporary left
    np.testing.assert_array_equal(handoff.read_tensor(tmp_path, name, LIMIT), x)
    other, _ = handoff.write_tensor(tmp_path, x)
    assert other != name  # a unique file per request
    handoff.remove(tmp_path, name)
    handoff.remove(tmp_path, name)  # idempotent
    assert os.listdir(tmp_path) == [other]


@pytest.mark.parametrize(
    "reference",
    [
        "../secret.npy",
        "/etc/passwd",
        "a/b.npy",
        "..",
        "",
        "input.npy",
        "0" * 32 + ".npy/../x",
        "0" * 31 + ".npy",
        "0" * 32 + ".NPY",
    ],
)
def test_references_that_are_not_handoff_names_are_refused(tmp_path, reference):
    with pytest.raises(BadRequest) as err:
        handoff.decode_reference(handoff.encode_reference(reference))
    assert err.value.code == "invalid_reference"
    with pytest.raises(BadRequest):
        handoff.read_tensor(tmp_path, reference, LIMIT)


def test_bad_reference_bodies_are_refused():
    for body in (b"nope", b'{"file": "x"}', b'{"name": 7}', b"[]"):
        with pytest.raises(BadRequest):
            handoff.decode_reference(body)


def test_files_that_are_not_safe_regular_handoff_files_are_refused(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "outside.npy"
    outside.write_bytes(codec.encode(tensor()))
    names = iter(f"{i:032x}.npy" for i in range(1, 100))

    link_out = next(names)
    (root / link_out).symlink_to(outside)
    inside_target, _ = handoff.write_tensor(root, tensor())
    link_in = next(names)
    (root / link_in).symlink_to(root / inside_target)
    fifo = next(names)
    os.mkfifo(root / fifo)
    directory = next(names)
    (root / directory).mkdir()
    big = next(names)
    (root / big).write_bytes(codec.encode(np.zeros((2, 3, 224, 224), np.float32)))
    float64 = next(names)
    (root / float64).write_bytes(codec.encode(tensor().astype(np.float64)))
    garbage = next(names)
    (root / garbage).write_bytes(b"\x93NUMPY garbage")
    missing = next(names)

    for name, words in [
        (link_out, "cannot be opened"),
        (link_in, "cannot be opened"),
        (fifo, "not a regular file"),
        (directory, "not a regular file"),
        (big, "more than"),
        (garbage, "not a .npy"),
        (missing, "no hand-off file"),
    ]:
        with pytest.raises(BadRequest, match=words):
            handoff.read_tensor(root, name, LIMIT)
    assert (
        handoff.read_tensor(root, float64, 2 * LIMIT).dtype == np.float64
    )  # the model's validation refuses it (below)


def test_sweep_removes_only_old_handoff_files(tmp_path):
    fresh, _ = handoff.write_tensor(tmp_path, tensor())
    old, _ = handoff.write_tensor(tmp_path, tensor())
    stale_tmp = tmp_path / f".tmp-{'a' * 32}.npy"
    stale_tmp.write_bytes(b"half")
    unrelated = tmp_path / "notes.txt"
    unrelated.write_text("keep me")
    link = tmp_path / f"{'b' * 32}.npy"
    link.symlink_to(unrelated)
    long_ago = time.time() - 3600
    for path in (tmp_path / old, stale_tmp, unrelated):
        os.utime(path, (long_ago, long_ago))
    os.utime(link, (long_ago, long_ago), follow_symlinks=False)
    assert handoff.sweep(tmp_path, ttl_s=60) == 2
    assert sorted(os.listdir(tmp_path)) == sorted([fresh, "notes.txt", link.name])
    assert handoff.sweep(tmp_path / "absent", ttl_s=60) == 0


@pytest.mark.parametrize(
    "name",
    [
        "input.npy",
        "A" * 32 + ".npy",
        "0" * 32 + ".NPY",
        "0" * 32 + ".npy.npy",
        ".tmp-" + "0" * 32 + ".npy",
        "sub/" + "0" * 32 + ".npy",
        "../" + "0" * 32 + ".npy",
    ],
    ids=["other-name", "upper-hex", "upper-suffix", "double-suffix", "temporary", "subdirectory", "parent"],
)
def test_a_name_read_tensor_could_not_have_written_is_refused_even_when_that_file_is_valid(tmp_path, name):
    """The name check alone guards the read: a well-formed tensor file of exactly that name exists
    (a writer's temporary, a file in a subdirectory or beside the root), so the later open, type
    and size checks would all let it through."""
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    target = root / name
    target.write_bytes(codec.encode(tensor()))
    assert target.resolve().is_file()
    with pytest.raises(BadRequest) as err:
        handoff.read_tensor(root, name, LIMIT)
    assert err.value.code == "invalid_reference" and "is not a hand-off file name" in err.value.message


@pytest.mark.parametrize(
    "content_type, transport",
    [
        ("application/x-npy", "http"),
        ("application/json; charset=utf-8", "json"),
        (wire.TENSOR_REFERENCE_MEDIA_TYPE, "volume"),
    ],
)
def test_the_media_type_names_the_transport(content_type, transport):
    assert handoff.mode_of(content_type) == transport


@pytest.mark.parametrize("content_type", [None, "", "text/csv", "application/x-npy-not"])
def test_any_other_media_type_is_a_415_naming_the_accepted_ones(content_type):
    with pytest.raises(UnsupportedMediaType, match="application/x-npy"):
        handoff.mode_of(content_type)
