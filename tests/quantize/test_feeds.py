"""The calibration-feed check both quantizers share (quantize/feeds.py): every bad feed is a DataError."""

from __future__ import annotations

import numpy as np
import pytest

from mobex.artifacts import TensorSpec
from mobex.errors import DataError
from mobex.quantize.feeds import checked_feeds

INPUTS = [TensorSpec("image", (1, 3, 4, 4), "float32")]
GOOD = {"image": np.zeros((1, 3, 4, 4), np.float64)}


def check(calibration):  # noqa: ANN001, ANN202
    return checked_feeds(INPUTS, calibration, variant="int8", drop_hint="drop 'int8'")


def test_good_feeds_are_cast_to_the_input_dtype() -> None:
    (feed,) = check([GOOD])
    assert feed["image"].dtype == np.float32 and feed["image"].flags.c_contiguous


@pytest.mark.parametrize(
    ("calibration", "message"),
    [
        (None, "needs calibration data"),
        ([], "needs calibration data"),
        ([GOOD, {"pixels": GOOD["image"]}], r"sample 1 has arrays \['pixels'\]"),
        ([{"image": np.zeros((3, 4, 4))}], r"shape \[3, 4, 4\], the model takes \[1, 3, 4, 4\]"),
        ([GOOD, {"image": np.full((1, 3, 4, 4), np.nan)}], "sample 1: array 'image' contains NaN or inf"),
        ([{"image": np.full((1, 3, 4, 4), np.inf)}], "contains NaN or inf"),
    ],
)
def test_bad_feeds_are_data_errors(calibration, message: str) -> None:  # noqa: ANN001
    with pytest.raises(DataError, match=message):
        check(calibration)
