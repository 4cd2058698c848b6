"""The request language: parsing and the messages for each mistake."""

from __future__ import annotations

import pytest

from jupyter_hwsched.protocol.errors import RequestError
from jupyter_hwsched.protocol.request import (
    HardwareRequest,
    format_memory,
    make_request,
    parse_memory,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("40G", 40 * 1024**3),
        ("512M", 512 * 1024**2),
        ("80GiB", 80 * 1024**3),
        ("1.5G", int(1.5 * 1024**3)),
        ("2048", 2048),
        ("1T", 1024**4),
    ],
)
def test_memory_sizes(text: str, expected: int) -> None:
    assert parse_memory(text) == expected


@pytest.mark.parametrize("text", ["lots", "-4G", "G", "4X", "0"])
def test_bad_memory_sizes(text: str) -> None:
    with pytest.raises(RequestError, match="gpu-mem"):
        parse_memory(text)


def test_format_memory_round_trip() -> None:
    for text in ("80G", "16G", "512M", "1T"):
        value = parse_memory(text)
        assert value is not None and format_memory(value) == text


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"gpus": 0}, "asks for no GPU"),
        ({"gpus": -1}, "asks for no GPU"),
        ({"gpus": "x"}, "not a whole number"),
        ({"gpus": 65}, "more than one session may hold"),
        ({"gpus": True}, "not a whole number"),
        ({"gpu_type": "A100; rm -rf /"}, "not a GPU model name"),
        ({"timeout": "soon"}, "not a number of seconds"),
        ({"timeout": -5}, "positive number of seconds"),
    ],
)
def test_mistakes_say_what_to_change(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(RequestError, match=message):
        make_request(**kwargs)


def test_request_from_json_validates_fields() -> None:
    assert HardwareRequest.from_json(
        {"gpus": 2, "gpu_type": "A100", "gpu_mem": "40G"}
    ) == HardwareRequest(gpus=2, gpu_type="A100", gpu_mem=40 * 1024**3)
    with pytest.raises(RequestError, match="unknown request field"):
        HardwareRequest.from_json({"gpus": 1, "ram": 4})
    with pytest.raises(RequestError, match="JSON object"):
        HardwareRequest.from_json([1])


def test_format_memory_of_a_real_gpu() -> None:
    assert format_memory(81559 * 1024**2) == "79.6G"  # an H100 as NVML reports it
