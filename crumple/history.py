"""The row files of a trajectory folder, appended to as training goes: the index
(``trajectory.jsonl``: a snapshot's step and loss) and the curvature history
(``curvature.jsonl``: the step, the training loss and the curvature measured there). A
reader takes a half-written last line (a run stopped while writing it) as not written;
any other damage is named with its file and line. :func:`sharpness` turns curvature rows
into the Dataset ``cr.open(run)["sharpness"]`` gives."""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from crumple.errors import CrumpleError
from crumple.names import CURVATURE_ROWS, TRAJECTORY_INDEX

# the curvature history's variables, their long names, and their order on the page
CURVATURE = {
    "lambda_max": "top Hessian eigenvalue",
    "lambda_max_residual": "relative residual |Hv - lambda v| / |lambda| of the top eigenpair",
    "directional": "curvature along the last update, d^T H d / d^T d",
    "trace": "Hessian trace (Hutchinson)",
    "trace_stderr": "standard error of the trace",
    "preconditioned": "top eigenvalue of the preconditioned Hessian P^-1 H (Adam's P)",
    "threshold": "stability threshold of the optimizer",
    "loss": "training loss",
    "products": "Hessian-vector products taken",
}


def index_row(step: int, loss: float) -> str:
    """One line of a trajectory folder's index (``trajectory.jsonl``).

    Example:
        >>> index_row(3, 0.5)
        '{"step": 3, "loss": 0.5}\\n'
    """
    return row_text({"step": step, "loss": loss})


def row_text(row: Mapping[str, float]) -> str:
    """One line of a row file: the row as JSON (nan written as ``NaN``, as Python reads it).

    Example:
        >>> row_text({"step": 2, "loss": 0.5, "lambda_max": float("nan")})
        '{"step": 2, "loss": 0.5, "lambda_max": NaN}\\n'
    """
    return json.dumps(dict(row)) + "\n"


def read_index(index: Path) -> list[tuple[int, int, float]]:
    """The rows of a trajectory's index as (line number, step, loss) (:func:`read_rows`).

    Example:
        >>> import tempfile, warnings
        >>> index = Path(tempfile.mkdtemp()) / TRAJECTORY_INDEX
        >>> _ = index.write_text(index_row(0, 1.0) + index_row(5, 0.5) + '{"step": 1')
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     read_index(index)
        [(1, 0, 1.0), (2, 5, 0.5)]
        >>> "half-written" in str(caught[0].message)
        True
    """
    return [(number, row["step"], row["loss"]) for number, row in read_rows(index)]


def read_rows(file: Path) -> list[tuple[int, dict]]:
    """The rows of a row file as (line number, row). A last line without its line end that
    is not a whole row (a run stopped while writing it) is left out with a warning; any
    other line that is not a row, or a step that does not come after the one before, is a
    :class:`CrumpleError` naming the file and the line."""
    try:
        text = file.read_bytes().decode("utf-8", errors="replace")
    except OSError as e:
        raise CrumpleError(f"cannot read {str(file)!r}: {e}") from e
    lines = text.split("\n")  # the last is "" when the file ends a line
    rows: list[tuple[int, dict]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = _row(line, rows[-1][1]["step"] if rows else None)
        except ValueError as e:
            if number < len(lines) or _is_json(line):  # a line cut short is not JSON
                what = (
                    'each line is {"step": N, "loss": X}, for the snapshot '
                    "step_N.safetensors beside it"
                    if file.name == TRAJECTORY_INDEX
                    else 'each line is {"step": N, "loss": X, ...} with numbers'
                )
                raise CrumpleError(
                    f"{str(file)!r}, line {number}: {e}. The file is damaged: restore it, or "
                    f"delete line {number} to leave that step out ({what})"
                ) from None
            warnings.warn(
                f"crumple: {str(file)!r} ends in a half-written line ({line[:60]!r}: the run "
                f"was stopped while recording); reading the {len(rows)} whole lines before it",
                stacklevel=4,
            )
            continue
        rows.append((number, row))
    return rows


def _is_json(line: str) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


def _row(line: str, last: int | None) -> dict:
    """A line as a row (its step an int, every other value a float), or a ``ValueError``
    that says what is wrong with it (``last``: the step before it)."""
    try:
        row = json.loads(line)
    except ValueError:
        raise ValueError(f"{line[:80]!r} is not JSON") from None
    if not isinstance(row, dict) or not {"step", "loss"} <= row.keys():
        raise ValueError(f'{line[:80]!r} is not a row {{"step": N, "loss": X}}')
    step = row["step"]
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < 2**63:
        raise ValueError(f"the step {step!r} is not a whole number from 0 to 2^63 - 1")
    for name, value in row.items():
        if name != "step" and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(f"the {name} {value!r} is not a number")
    if last is not None and step <= last:
        raise ValueError(f"the step {step} does not come after the step before it, {last}")
    return {"step": step, **{k: float(v) for k, v in row.items() if k != "step"}}


def end_line(file: Path) -> None:
    """Before a row is appended to ``file``: a last line without its line end gets one if
    it is a whole row, and is cut off if it is half-written (a run stopped while recording,
    which :func:`read_rows` left out), so that the new row starts a line of its own."""
    if not file.is_file():
        return
    with open(file, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(size - 1, 0))
        if size == 0 or f.read(1) == b"\n":
            return
        f.seek(0)
        text = f.read()
        start = text.rfind(b"\n") + 1
        if _is_json(text[start:].decode("utf-8", errors="replace")):
            f.write(b"\n")
        else:
            f.truncate(start)


def read_curvature(folder: Path) -> list[dict]:
    """The curvature rows a trajectory folder holds (``[]`` without ``curvature.jsonl``)."""
    file = Path(folder) / CURVATURE_ROWS
    return [row for _, row in read_rows(file)] if file.is_file() else []


def sharpness(rows: Sequence[Mapping[str, float]], attrs: Mapping | None = None) -> xr.Dataset:
    """The curvature history as a Dataset over ``step``: each variable of :data:`CURVATURE`
    measured in any row (nan where a row lacks it), with its long name; other keys of the
    rows are left out.

    Example:
        >>> ds = sharpness([{"step": 0, "loss": 1.0, "lambda_max": 2.0},
        ...                 {"step": 10, "loss": 0.5, "lambda_max": 3.0}])
        >>> ds.lambda_max.values.tolist(), ds.step.values.tolist()
        ([2.0, 3.0], [0, 10])
    """
    names = [n for n in CURVATURE if any(n in row for row in rows)]  # others left out
    steps = np.array([int(row["step"]) for row in rows], dtype=np.int64)
    data = {
        name: (
            "step",
            np.array([float(row.get(name, math.nan)) for row in rows], dtype=np.float64),
            {"long_name": CURVATURE.get(name, name)},
        )
        for name in names
    }
    return xr.Dataset(data, coords={"step": steps}, attrs=dict(attrs or {}))
