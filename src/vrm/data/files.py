"""Files: crash-safe writing (results, caches and checkpoints appear whole or not at all) and reading rows.

`write_json` writes strict JSON (non-finite floats become `null`, never the bare `NaN` / `Infinity` that
strict parsers reject); `exclusive_lock` keeps a second process from writing an output another one is writing.

`read_records` reads jsonl / json / parquet / csv rows (optionally gzip-compressed); whatever is wrong with a
file (bad bytes, a truncated archive, broken quoting, deep nesting) is a one-line `DataFormatError` naming the
file and line. `finite_number` and `check_text` check the values of fields.
"""

from __future__ import annotations

import csv
import errno
import gzip
import json
import math
import os
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def atomic_output(path: str) -> Iterator[str]:
    """Yield a staging path to write `path` through; it is renamed into place only if the block succeeds."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    base, extension = os.path.splitext(os.path.basename(path))
    # same directory (the rename is atomic), same extension (writers that infer the format from it still work)
    staging = os.path.join(directory, f".{base}.tmp-{os.getpid()}{extension}")
    try:
        yield staging
        os.replace(staging, path)
    finally:
        if os.path.exists(staging):
            os.remove(staging)


def finite_or_none(data: Any) -> Any:
    """`data` with every NaN or infinite float (inside dicts, lists and tuples) replaced by None.

    JSON has no NaN: Python's `json` writes a bare `NaN`, which strict parsers (JavaScript's `JSON.parse`, jq,
    Go, `json.loads(..., parse_constant=...)` refusing it) reject. A metric that is undefined (no pairs to
    measure it on) is written as `null`; readers that expect a float map it back to NaN
    (`vrm.evaluation.report`)."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: finite_or_none(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [finite_or_none(value) for value in data]
    return data


def write_json(data: Any, path: str, indent: int | None = 2) -> None:
    """Write strict JSON atomically (temporary file, then rename); `indent=None`: compact.

    Non-finite floats are written as `null` (`finite_or_none`), so the file parses under any JSON parser."""
    text = json.dumps(
        finite_or_none(data), indent=indent, separators=None if indent else (",", ":"), allow_nan=False
    )
    with atomic_output(path) as staging, open(staging, "w", encoding="utf-8") as handle:
        handle.write(text)


class OutputLockedError(OSError):
    """Another process (or thread) holds the lock of an output this one wants to write."""


@contextmanager
def exclusive_lock(path: str, what: str = "output") -> Iterator[str]:
    """Hold an exclusive lock on `path + ".lock"` for the block; if another process holds it, raise an
    `OutputLockedError` naming `path` at once (no waiting).

    The lock is `fcntl.flock` on the lock file: the OS drops it when its holder exits, crashes or is killed,
    so a stale lock file never blocks a later run. Locks belong to open files, so two threads of one process
    exclude each other too. The lock file is removed when the block ends; a process that locked a lock file
    just removed by its previous holder sees that it is no longer at `path + ".lock"` and locks the new one.
    Where `fcntl` does not exist (Windows), no lock is taken.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield path + ".lock"
        return
    lock_path = path + ".lock"
    os.makedirs(os.path.dirname(os.path.abspath(lock_path)), exist_ok=True)
    while True:
        descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(descriptor)
            if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            holder = _lock_holder(lock_path)
            raise OutputLockedError(
                f"{path}: another process{holder} is writing this {what} (it holds {lock_path}); wait for it "
                f"to finish, or write to another {what}"
            ) from None
        try:
            same = os.path.samestat(os.fstat(descriptor), os.stat(lock_path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(descriptor)  # the previous holder removed that file after we opened it: lock the new one
    try:
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f"{os.getpid()}\n".encode())
        yield lock_path
    finally:
        try:
            os.remove(lock_path)  # while still holding it: the next writer then re-checks, see above
        except FileNotFoundError:
            pass
        os.close(descriptor)  # releases the lock


def _lock_holder(lock_path: str) -> str:
    """The holder's process id as " (pid N)" from a lock file's content; "" when it holds none yet."""
    try:
        with open(lock_path, encoding="ascii") as handle:
            pid = handle.read(32).strip()
    except (OSError, ValueError):
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""


def write_jsonl(rows: Iterable[Any], path: str) -> None:
    """Write one JSON value per line, atomically (temporary file, then rename); NaN and infinities as `null`."""
    with atomic_output(path) as staging, open(staging, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(finite_or_none(row), allow_nan=False) + "\n")


# ----- reading rows -------------------------------------------------------------------------------------------
FILE_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet", ".csv")


class DataFormatError(ValueError):
    """A row or a file does not match the expected format; the message names where (file:line: field)."""


def finite_number(value: Any, location: str, field: str, *, missing: float | None = None) -> float | None:
    """`value` (a number, or a number as text as CSV cells hold it) as a finite float.

    None and blank text give `missing`; NaN, infinities, booleans and anything else raise a `DataFormatError`
    naming `location` and `field`.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return missing
    number = None
    if not isinstance(value, bool):
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            pass
    if number is None or not math.isfinite(number):
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "..."
        raise DataFormatError(f"{location}: '{field}' must be a number (not NaN or infinite), got {shown}")
    return number


def check_text(value: str, location: str, field: str) -> str:
    """`value` if it is valid Unicode: a lone surrogate (JSON `"\\ud800"`) fails later in every tokenizer."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise DataFormatError(
            f"{location}: '{field}' is not valid Unicode text (lone surrogate {value[err.start]!r} at "
            f"character {err.start})"
        ) from None
    return value


def _lines(path: str) -> Iterator[tuple[int, str]]:
    """(line number, text) of a UTF-8 file, gzip-compressed if its name ends in `.gz`; each line is decoded on
    its own (newline kept), so a bad byte is reported with its line, and so are truncated or corrupt archives."""
    number = 0
    try:
        with (gzip.open if path.endswith(".gz") else open)(path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                try:
                    yield number, raw.decode("utf-8-sig" if number == 1 else "utf-8")
                except UnicodeDecodeError as err:
                    raise DataFormatError(
                        f"{path}:{number}: not UTF-8 text (byte 0x{raw[err.start]:02x} at byte {err.start + 1} "
                        "of the line)"
                    ) from None
    except gzip.BadGzipFile:
        raise DataFormatError(f"{path}: not a gzip file (the name ends in .gz)") from None
    except (EOFError, zlib.error) as err:
        raise DataFormatError(
            f"{path}:{number + 1}: the compressed file is truncated or corrupt ({err})"
        ) from None


def _json_value(text: str, location: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DataFormatError(f"{location}: invalid JSON ({err.msg})") from None
    except RecursionError:
        raise DataFormatError(f"{location}: JSON nested too deeply") from None


def read_records(
    path: str, invalid: list[tuple[str, str]] | None = None
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (location, row) from a jsonl / json / parquet / csv file (optionally gzip-compressed).

    Every failure to read is a `DataFormatError` naming the file (and the line where there is one). With an
    `invalid` list, a row that cannot be read (invalid JSON, not an object, extra CSV fields) is appended to it
    as (location, reason) and skipped instead; a file that cannot be read at all is still an error.
    """

    def bad(location: str, reason: str) -> None:
        if invalid is None:
            raise DataFormatError(f"{location}: {reason}")
        invalid.append((location, reason))

    if not os.path.exists(path):
        raise DataFormatError(f"{path}: file not found")
    name = path[:-3] if path.endswith(".gz") else path
    if name.endswith(".jsonl"):
        for number, line in _lines(path):
            if not line.strip():
                continue
            try:
                row = _json_value(line, f"{path}:{number}")
            except DataFormatError as err:
                bad(f"{path}:{number}", str(err).removeprefix(f"{path}:{number}: "))
                continue
            if not isinstance(row, dict):
                bad(f"{path}:{number}", f"expected a JSON object, got {type(row).__name__}")
                continue
            yield f"{path}:{number}", row
    elif name.endswith(".json"):
        text = "".join(line for _, line in _lines(path))
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataFormatError(f"{path}: invalid JSON at line {err.lineno} ({err.msg})") from None
        except RecursionError:
            raise DataFormatError(f"{path}: JSON nested too deeply") from None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise DataFormatError(f"{path}: expected a JSON list of rows (or {{'data': [...]}})")
        for index, row in enumerate(data):
            if not isinstance(row, dict):
                bad(f"{path}: row {index}", f"expected an object, got {type(row).__name__}")
                continue
            yield f"{path}: row {index}", row
    elif name.endswith(".parquet"):
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as err:  # noqa: BLE001 - pyarrow's errors do not name the file
            message = " ".join(str(err).split())
            raise DataFormatError(f"{path}: not a readable parquet file ({message})") from None
        for index, row in enumerate(rows):
            yield f"{path}: row {index}", row
    elif name.endswith(".csv"):
        yield from _read_csv(path, bad)
    else:
        raise DataFormatError(f"{path}: unknown file type (expected one of {', '.join(FILE_SUFFIXES)})")


def _read_csv(path: str, bad: Callable[[str, str], None]) -> Iterator[tuple[str, dict[str, Any]]]:
    """CSV rows, located by the line they start on; extra fields and bad quoting are errors, not guesses."""
    reader = csv.DictReader((line for _, line in _lines(path)), strict=True)
    end = 1  # the header
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            raise DataFormatError(f"{path}:{end + 1}: invalid CSV ({err})") from None
        start, end = end + 1, reader.line_num
        location = f"{path}:{start}"
        if None in row:
            bad(
                location,
                f"{len(row[None])} more field(s) than the {len(reader.fieldnames)} columns of the header "
                "(an unquoted comma?)",
            )
            continue
        try:
            decoded = _decode_csv_row(row, location)
        except DataFormatError as err:
            bad(location, str(err).removeprefix(f"{location}: "))
            continue
        yield location, decoded


def _decode_csv_row(row: dict[str, str | None], location: str) -> dict[str, Any]:
    """CSV cells are text: cells that look like JSON lists or objects (message lists) are decoded."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, str) and value[:1] in ("[", "{"):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass  # text that happens to start with a bracket
            except RecursionError:
                raise DataFormatError(f"{location}: '{key}' holds JSON nested too deeply") from None
        out[key] = value
    return out
