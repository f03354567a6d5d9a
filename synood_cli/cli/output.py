"""Row writers for `synood score`: csv, tsv, jsonl streamed and flushed per batch; parquet at the end.

Files are written through `OutputFile` (cli/outfile.py): an unpredictable temp file renamed into
place, or directly for a device or FIFO.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import sys
from pathlib import Path
from typing import IO

from synood_cli.cli.outfile import OutputFile, where_to_write
from synood_cli.errors import UsageError

FORMATS = ("csv", "tsv", "jsonl", "parquet")


def pick_format(fmt: str | None, output: str) -> str:
    """The output's format from --format and -o's extension; refused (exit 2) when they disagree.

    An extension that names no format (`out.xlsx`, `out.json`: JSON Lines is not one JSON
    document) is refused unless --format says what to write; a name without one writes --format, else csv.
    """
    if fmt and fmt not in FORMATS:
        raise UsageError(f"unknown --format {fmt!r}", hint=f"use one of {', '.join(FORMATS)}")
    ext = Path(output).suffix.lower().lstrip(".") if output != "-" else ""
    by_ext = ext if ext in FORMATS else None
    if fmt and by_ext and fmt != by_ext:
        raise UsageError(f"-o {output} names {by_ext}, but --format says {fmt}", hint=f"drop --format, or name the file .{fmt}")
    if ext and not by_ext and not fmt:
        raise UsageError(
            f"-o {output}: the extension .{ext} names no score format",
            hint="end the name in .csv, .tsv, .jsonl (JSON Lines, one object per row) or .parquet, or pass --format",
        )
    chosen = fmt or by_ext or "csv"
    if chosen == "parquet" and output == "-":
        raise UsageError("parquet cannot stream to stdout", hint="pass -o scores.parquet, or use --format csv|tsv|jsonl")
    return chosen


class RowWriter:
    """Writes dict rows with fixed columns; the header goes first, floats keep full precision."""

    def __init__(self, fmt: str, output: str, columns: list[str], meta: dict | None = None):
        """`meta` (method, model, checkpoint, identities, threshold) goes into Parquet metadata; for
        JSON Lines into the method/model/checkpoint fields of every row and the identities of the
        first; for a CSV or TSV file into its sidecar OUT.identity.json (the CSV stays plain)."""
        self.fmt, self.columns, self.output = fmt, columns, output
        self.nonfinite = 0  # NaN/inf values written (a NaN checkpoint): reported, null in JSON, exit 4 under --strict
        self.meta = meta or {}
        self._fields = {k: self.meta.get(k) for k in ("method", "model", "checkpoint")} if meta else {}
        self._first = {"identities": self.meta["identities"]} if "identities" in self.meta else {}  # JSON Lines: on the first row only
        self._rows: list[dict] = []
        self._out: OutputFile | None = None
        if fmt == "parquet":
            self.stream: IO | None = None
            where_to_write(Path(output))  # a folder or a dangling link is refused before any work
        elif output == "-":
            self.stream = sys.stdout
        else:
            self._open()
            self.stream = self._out.stream
        if fmt in ("csv", "tsv"):
            self._csv = csv.writer(self.stream, delimiter="," if fmt == "csv" else "\t", lineterminator="\n")
            with self._naming_errors():
                self._csv.writerow(columns)
                self.stream.flush()

    def _open(self, binary: bool = False) -> None:
        self._out = OutputFile(self.output, binary=binary)
        from synood_cli.cli.render import on_failure

        on_failure(self.abort)  # an error or Ctrl-C mid-run leaves no .partial file behind

    @contextlib.contextmanager
    def _naming_errors(self):
        """A write error (a full disk) is one line naming the output file, and the temp file goes at once."""
        try:
            yield
        except OSError as e:
            if self._out is None:
                raise  # stdout: a broken pipe ends quietly at the error boundary
            self._out.abort()
            raise self._out.error(e) from None

    def _nonfinite(self, row: dict) -> list[str]:
        """The row's columns holding NaN or inf (counted once per row)."""
        return [c for c in self.columns if isinstance(row[c], float) and not math.isfinite(row[c])]

    def write(self, rows: list[dict]) -> None:
        if self.fmt == "parquet":
            self.nonfinite += sum(1 for r in rows if self._nonfinite(r))
            self._rows.extend(rows)
            return
        with self._naming_errors():
            self._write(rows)

    def _write(self, rows: list[dict]) -> None:
        for row in rows:
            bad = self._nonfinite(row)
            if bad:
                self.nonfinite += 1
            if self.fmt == "jsonl":
                # NaN is not JSON: a non-finite score is written as null
                self.stream.write(json.dumps({**{c: None if c in bad else row[c] for c in self.columns}, **self._fields, **self._first}, allow_nan=False) + "\n")
                self._first = {}
            else:
                self._csv.writerow([repr(row[c]) if isinstance(row[c], float) else row[c] for c in self.columns])  # None: an empty cell
        self.stream.flush()

    def abort(self) -> None:
        """A failed run leaves no `.partial` file behind (the target is never written)."""
        if self._out is not None:
            self._out.abort()

    def close(self) -> None:
        if self.fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.table({c: [r[c] for r in self._rows] for c in self.columns})
            if self.meta:
                from synood_cli.metrics import META_KEY

                table = table.replace_schema_metadata({META_KEY: json.dumps(self.meta).encode()})
            self._open(binary=True)
            with self._naming_errors():
                pq.write_table(table, self._out.stream)
            self._out.commit()
        elif self._out is not None:
            regular = self._out.through_temp_file  # a device or a FIFO gets no sidecar beside it
            self._out.commit()
            if regular and "identities" in self.meta:
                from synood_cli.metrics import write_sidecar

                write_sidecar(Path(self.output), self.meta)
