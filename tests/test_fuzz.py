"""Fuzzing the loaders that read users' files: whatever the bytes, an image decode either gives
an array of the model's shape or one of the errors the loaders turn into a skip or a one-line
message; a CSV gives a series or a DeepstepError. Anything else is a crash.

CI runs a short fuzz; a long one: DEEPSTEP_FUZZ_EXAMPLES=20000 python -m pytest tests/test_fuzz.py
"""

import io
import os
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from deepstep.data.decode import DECODE_ERRORS, read_image
from deepstep.data.sequences import read_numbers
from deepstep.data.series import load_series
from deepstep.errors import DeepstepError

EXAMPLES = int(os.environ.get("DEEPSTEP_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)


def _valid(fmt: str) -> bytes:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).save(buffer, format=fmt)
    return buffer.getvalue()


SEEDS = {fmt: _valid(fmt) for fmt in ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")}


@st.composite
def mutated_images(draw):
    """A valid file of some format with bytes flipped, cut or inserted: close enough to pass the magic number."""
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(1, 8))):
        kind, at = draw(st.sampled_from(["flip", "cut", "insert"])), draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[at] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[at : at + draw(st.integers(1, 64))]
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        if not data:
            break
    return bytes(data)


def _decode(data: bytes, suffix: str = ".img") -> None:
    with tempfile.NamedTemporaryFile(suffix=suffix) as f:
        f.write(data)
        f.flush()
        try:
            array = read_image(f.name, (32, 32), 3)
        except DECODE_ERRORS:  # what decode_files, predict and the streamed path catch
            return
    assert array.shape == (3, 32, 32) and array.dtype == np.uint8


@FUZZ
@given(mutated_images())
def test_a_damaged_image_file_decodes_or_raises_a_handled_error(data):
    _decode(data)


@FUZZ
@given(st.binary(max_size=512))
def test_arbitrary_bytes_named_jpg_decode_or_raise_a_handled_error(data):
    _decode(data, ".jpg")


CSV_CELLS = st.one_of(
    st.sampled_from(["", "NA", "nan", "inf", "-1e309", "abc", "2000-01", "2000-13", "1", "2.5", '"x,y"', "#"]),
    st.text(alphabet="0123456789-.,:; eE\"'#\t", max_size=8),
)


@st.composite
def csv_texts(draw):
    header = draw(st.sampled_from(["Month,y", "Date,y,z", "year,month,day,hour,y", "y", "", "Month,y,y"]))
    rows = draw(st.lists(st.lists(CSV_CELLS, min_size=0, max_size=5).map(",".join), max_size=30))
    return "\n".join([header, *rows]) + draw(st.sampled_from(["", "\n", "\r\n"]))


@FUZZ
@given(csv_texts(), st.sampled_from(["none", "interpolate", "ffill", "drop"]))
def test_any_csv_loads_as_a_series_or_gives_a_one_line_error(text, fill):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "series.csv"
        path.write_text(text)
        try:
            series = load_series(str(path), target="y" if "y" in text.split("\n", 1)[0] else None, fill=fill)
        except DeepstepError as err:
            assert "\n" not in str(err)
            return
    assert series.values.ndim == 2 and len(series.values) >= 1
    assert np.isfinite(series.values).all()


@FUZZ
@given(st.text(alphabet="0123456789-.,; eE#\nabc", max_size=200))
def test_any_sequence_csv_reads_as_numbers_or_gives_a_one_line_error(text):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "seq_1.csv"
        path.write_text(text)
        try:
            values = read_numbers(path)
        except DeepstepError as err:
            assert "\n" not in str(err)
            return
    assert values.ndim == 2 and not np.isnan(values).any()
