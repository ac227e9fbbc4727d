"""Timestamp parsing: unix seconds (integer or fractional), unix milliseconds or ISO-8601 -> int64 seconds,
and the sub-second part in microseconds (which orders events within a second).

The unit is decided once per column, from the values: numbers that read as a date in 1990-2100 when
taken as seconds are seconds, those that do when taken as milliseconds are milliseconds; strings shaped
like `YYYY-MM-DD[( |T)hh:mm[:ss[.f]]][Z|+hh:mm]` are ISO-8601 (UTC unless they carry an offset). A column
holding more than one of these is an error, since no single reading of it is right. Values that fit no
window (say 0 or year 2300) are read in the column's unit and later fail the range check.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from seqjax.data.formats.base import PrepareError

UNITS = ("s", "ms", "iso")
SECONDS_WINDOW = (631_152_000, 4_102_444_800)  # 1990-01-01 .. 2100-01-01 as unix seconds

_NUMBER = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"
_ISO = r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}(:?\d{2})?)?$"
_ZONE = r"(Z|[+-]\d{2}(:?\d{2})?)$"

# Per-row kinds found by `classify`.
BAD, NUMBER, ISO = 0, 1, 2


def parse_time(text: str | float, what: str, tzinfo: dt.tzinfo = dt.UTC,
               error: type[ValueError] = PrepareError) -> int:
    """One time given by a person (config, cut, range bound): ISO date/time or unix seconds -> seconds.

    A naive date/time is local time in `tzinfo`; a bad value raises `error` naming `what`."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return _in_range(float(text), text, what, error)
    s = str(text).strip()
    try:
        number = float(s)
    except ValueError:
        pass
    else:
        return _in_range(number, text, what, error)
    try:
        t = dt.datetime.fromisoformat(s)
    except ValueError:
        raise error(f"{what}: cannot read {text!r} as a date, ISO-8601 time or unix seconds") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=tzinfo)
    return int(np.floor(t.timestamp()))


# What `iso` can print: 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59Z.
_FIRST_SECOND, _LAST_SECOND = -62_135_596_800, 253_402_300_799


def _in_range(seconds: float, text, what: str, error: type[ValueError]) -> int:
    if not _FIRST_SECOND <= seconds <= _LAST_SECOND:  # also refuses nan and inf
        raise error(f"{what}: {text!r} is not a time between the years 1 and 9999 in unix seconds")
    return int(np.floor(seconds))


def iso(seconds: int) -> str:
    """Unix seconds -> '2017-11-25T10:00:00Z'."""
    return dt.datetime.fromtimestamp(int(seconds), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def classify(values: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(value float64 [R], kind int8 [R], micros int64 [R]): numbers as written; ISO rows in whole seconds with
    their sub-second part in micros (0 for the other rows); BAD rows 0."""
    n = len(values)
    t = values.type
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        # nanosecond times lose their sub-microsecond part; out-of-range values still raise
        us = pc.cast(pc.cast(values, options=pc.CastOptions(pa.timestamp("us", getattr(t, "tz", None)),
                                                            allow_time_truncate=True)), pa.int64())
        ok = pc.is_valid(us).to_numpy(zero_copy_only=False)
        secs, micros = np.divmod(pc.fill_null(us, 0).to_numpy(zero_copy_only=False), 1_000_000)
        return secs.astype(np.float64), np.where(ok, ISO, BAD).astype(np.int8), micros
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        value = pc.fill_null(values.cast(pa.float64()), np.nan).to_numpy(zero_copy_only=False)
        return np.nan_to_num(value), np.where(np.isfinite(value), NUMBER, BAD).astype(np.int8), np.zeros(n, np.int64)
    strings = pc.utf8_trim_whitespace(pc.fill_null(values.cast(pa.large_string()), ""))
    value, kind, micros = np.zeros(n), np.zeros(n, np.int8), np.zeros(n, np.int64)
    is_num = pc.match_substring_regex(strings, _NUMBER).to_numpy(zero_copy_only=False)
    if is_num.any():
        value[is_num] = strings.filter(pa.array(is_num)).cast(pa.float64()).to_numpy(zero_copy_only=False)
        kind[is_num] = NUMBER
    is_iso = pc.match_substring_regex(strings, _ISO).to_numpy(zero_copy_only=False)
    if is_iso.any():
        us, ok = _parse_iso(strings.filter(pa.array(is_iso)))
        rows = np.flatnonzero(is_iso)[ok]
        value[rows], micros[rows] = np.divmod(us[ok], 1_000_000)
        kind[rows] = ISO
    return value, kind, micros


def _parse_iso(strings: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(unix microseconds int64, ok bool) for ISO-shaped strings; Arrow's parser first, Python's for the rest."""
    zoned = pc.match_substring_regex(strings, _ZONE).to_numpy(zero_copy_only=False)
    us, ok = np.zeros(len(strings), np.int64), np.zeros(len(strings), bool)
    for mask, unit in ((~zoned, pa.timestamp("us")), (zoned, pa.timestamp("us", "UTC"))):
        if not mask.any():
            continue
        part = strings.filter(pa.array(mask))
        try:
            us[mask], ok[mask] = pc.cast(pc.cast(part, unit), pa.int64()).to_numpy(zero_copy_only=False), True
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            # Some value Arrow rejects (month 13, an offset form it lacks): parse one by one.
            for i, s in zip(np.flatnonzero(mask), part.to_pylist()):
                try:
                    seconds = parse_time(s, "timestamp")
                except PrepareError:
                    continue
                us[i], ok[i] = seconds * 1_000_000 + dt.datetime.fromisoformat(s).microsecond, True
    return us, ok


@dataclasses.dataclass
class ParsedTimes:
    seconds: np.ndarray  # int64 [R], unix seconds (0 where not ok)
    micros: np.ndarray  # int64 [R], the sub-second part in microseconds: orders events within a second
    ok: np.ndarray  # bool [R], False: bad_timestamp
    unit: str | None  # one of UNITS; None when no row parsed


def parse_columns(columns: Sequence[pa.Array], files: Sequence[str], lines: Sequence[np.ndarray],
                  unit: str = "auto") -> ParsedTimes:
    """Parses the timestamp column of several files as one column: one unit for all rows.

    `unit="auto"` detects it; mixing units raises PrepareError naming a line of each kind.
    """
    parts = []
    for column, path in zip(columns, files):
        try:
            parts.append(classify(column))
        except pa.ArrowInvalid as e:  # a typed (Parquet) time column Arrow cannot convert
            raise PrepareError(f"{path}: timestamp column: {e}") from None
    value = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0)
    kind = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int8)
    iso_micros = np.concatenate([p[2] for p in parts]) if parts else np.zeros(0, np.int64)
    lo, hi = SECONDS_WINDOW
    looks = {
        "s": (kind == NUMBER) & (value >= lo) & (value < hi),
        "ms": (kind == NUMBER) & (value >= lo * 1000) & (value < hi * 1000),
        "iso": kind == ISO,
    }
    if unit == "auto":
        found = [u for u in UNITS if looks[u].any()]
        if len(found) > 1:
            raise PrepareError("timestamp column mixes units: "
                               + "; ".join(_where(u, looks[u], columns, files, lines) for u in found[:2]))
        unit = found[0] if found else ("s" if (kind == NUMBER).any() else None)
    if unit == "iso":
        ok = kind == ISO
        seconds, micros = value, iso_micros
    else:
        ok = kind == NUMBER
        value = np.clip(value, -2.0**62, 2.0**62)
        if unit == "ms":  # integer milliseconds are exact in float64 up to 2**53
            seconds = np.floor(value / 1000)
            micros = np.rint((value - seconds * 1000) * 1000)
        else:
            seconds = np.floor(value)
            micros = np.rint((value - seconds) * 1e6)
        micros = np.clip(micros, 0, 999_999)  # rounding up to the next second stays in this one
    seconds = np.where(ok, seconds, 0).astype(np.int64)
    return ParsedTimes(seconds, np.where(ok, micros, 0).astype(np.int64), ok, unit)


def _where(unit: str, mask: np.ndarray, columns, files, lines) -> str:
    """'<file> line <n> looks like <unit> (<raw value>)' for the first row in `mask`."""
    row = int(np.flatnonzero(mask)[0])
    for col, path, ln in zip(columns, files, lines):
        if row < len(col):
            name = {"s": "unix seconds", "ms": "unix milliseconds", "iso": "ISO-8601"}[unit]
            return f"{path} line {int(ln[row])} looks like {name} ({col[row].as_py()!r})"
        row -= len(col)
    raise AssertionError("row outside the columns")
