"""One segmentation request: the same fields, defaults and checks for every surface."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from MedSegUNetLib.engine.errors import UsageError
from MedSegUNetLib.engine.request import SegmentationRequest

LIB = Path(__file__).resolve().parents[2] / "MedSegUNet" / "MedSegUNetLib"
CARD = {"roi": {"margin_mm": 4.0, "context_mm": 12.0}}


def test_the_cards_margin_and_context_are_the_defaults():
    assert SegmentationRequest().pipelineOptions(CARD) == {"useROI": True, "marginMM": 4.0, "contextMM": 12.0, "keepProbabilities": False}
    assert SegmentationRequest(marginMM=0.0, contextMM=2.5).pipelineOptions(CARD)["marginMM"] == 0.0  # a given 0 is not the default
    assert SegmentationRequest().margin({}) == 0.0 and SegmentationRequest().context({"roi": None}) == 0.0


def test_a_request_crosses_the_worker_boundary_whole():
    request = SegmentationRequest(
        modelPath="/m.pt",
        inputs=["a.nrrd"],
        roiSeries=["b", "c"],
        device="cpu",
        useROI=False,
        marginMM=3,
        roiBox=(np.array([1.0, 2, 3]), np.eye(3), np.array([5.0, 5, 5])),
        keepProbabilities=True,
    )
    again = SegmentationRequest.fromDict(json.loads(json.dumps(request.toDict())))
    assert again == request and again.roiBox[2] == (5.0, 5.0, 5.0) and again.inputs == ("a.nrrd",)


@pytest.mark.parametrize(
    "change, words",
    [
        ({"useROI": 1}, "'useROI' of the wrong type"),
        ({"marginMM": True}, "'marginMM' of the wrong type"),
        ({"inputs": "a.nrrd"}, "'inputs' of the wrong type"),
        ({"roiBox": [[0, 0], [[1, 0, 0]] * 3, [1, 1, 1]]}, "'roiBox' of the wrong type"),
        ({"device": "tpu"}, "Unknown device 'tpu'"),
        ({"marginMM": -1}, "margin must be a finite number"),
        ({"contextMM": float("nan")}, "context must be a finite number"),
        ({"sw_batch_size": 4}, "unknown field 'sw_batch_size'"),
    ],
)
def test_a_wrong_field_is_named_in_one_line(change, words):
    with pytest.raises(UsageError, match=words.replace("(", r"\(").replace(")", r"\)")) as error:
        SegmentationRequest.fromDict({**SegmentationRequest(modelPath="m.pt").toDict(), **change})
    assert "\n" not in str(error.value)


def test_only_the_request_resolves_the_cards_margin_and_context():
    # The panel shows the card's values and training configs have their own; a run reads them through the request.
    import re

    readers = sorted(
        path.relative_to(LIB).as_posix()
        for path in LIB.rglob("*.py")
        if re.search(r"""\.get\(["'](margin|context)_mm["']""", path.read_text(encoding="utf-8"))
    )
    assert readers == ["engine/cardview.py", "models/exporting.py", "models/traindata.py"], readers
