"""Label rows: one per TCP connection the traffic client opened.

The testbed joins these rows to the flows ndpiReader finds in the capture by
(src_ip, src_port, dst_ip, dst_port), using start/end to tell apart flows that
reuse a port in long runs. Each row is flushed as soon as its connection
closes, so a crash of the client loses no finished connection.

Columns:
    proto       6 (TCP)
    src_ip      client address of the connection (the side that opened it)
    src_port    client port
    dst_ip      server address
    dst_port    server port
    family      ws, wss or mcp (the HTTPS setting)
    scenario    scenario name, e.g. llm_chat
    label       1 = AI, 0 = not AI
    encrypted   1 if the connection uses TLS, else 0
    session     index of the session that opened the connection
    start       epoch seconds just before the TCP connect
    end         epoch seconds just after the connection closed
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

LABEL_COLUMNS = (
    "proto",
    "src_ip",
    "src_port",
    "dst_ip",
    "dst_port",
    "family",
    "scenario",
    "label",
    "encrypted",
    "session",
    "start",
    "end",
)

TCP = 6


@dataclass(frozen=True)
class LabelRow:
    """One labeled TCP connection, with the fields of `LABEL_COLUMNS`."""

    src_ip: str
    src_port: int
    dst_ip: str
    dst_port: int
    family: str
    scenario: str
    label: int
    encrypted: bool
    session: int
    start: float
    end: float
    proto: int = TCP

    def as_record(self) -> list[str]:
        return [
            str(self.proto),
            self.src_ip,
            str(self.src_port),
            self.dst_ip,
            str(self.dst_port),
            self.family,
            self.scenario,
            str(self.label),
            "1" if self.encrypted else "0",
            str(self.session),
            f"{self.start:.6f}",
            f"{self.end:.6f}",
        ]


class LabelWriter:
    """CSV writer of label rows that flushes every row.

    The file must not exist yet: a labels file belongs to one capture, and
    appending to or overwriting an earlier one would corrupt the join.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            self._file = open(self.path, "x", newline="", encoding="ascii")
        except FileExistsError:
            raise FileExistsError(
                f"labels file {str(self.path)!r} already exists; remove it or choose another --labels path"
            ) from None
        self._csv = csv.writer(self._file, lineterminator="\n")
        self._csv.writerow(LABEL_COLUMNS)
        self._file.flush()
        self.rows_written = 0

    def write(self, row: LabelRow) -> None:
        self._csv.writerow(row.as_record())
        self._file.flush()
        self.rows_written += 1

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def read_labels(path: str | os.PathLike[str]) -> list[LabelRow]:
    """Read a labels file written by `LabelWriter`.

    Raises:
        ValueError: if the header is not `LABEL_COLUMNS` or a row does not parse,
            naming the file and line.
    """
    path = Path(path)
    rows = []
    with open(path, newline="", encoding="ascii") as labels_file:
        reader = csv.reader(labels_file)
        header = next(reader, None)
        if header is None or tuple(header) != LABEL_COLUMNS:
            raise ValueError(
                f"{path}: header {header!r} is not the labels header {','.join(LABEL_COLUMNS)}; "
                "is this a file written by the traffic client?"
            )
        for record in reader:
            try:
                values = dict(zip(LABEL_COLUMNS, record, strict=True))
                rows.append(
                    LabelRow(
                        proto=int(values["proto"]),
                        src_ip=values["src_ip"],
                        src_port=int(values["src_port"]),
                        dst_ip=values["dst_ip"],
                        dst_port=int(values["dst_port"]),
                        family=values["family"],
                        scenario=values["scenario"],
                        label=int(values["label"]),
                        encrypted=values["encrypted"] == "1",
                        session=int(values["session"]),
                        start=float(values["start"]),
                        end=float(values["end"]),
                    )
                )
            except ValueError as exc:
                raise ValueError(f"{path}, line {reader.line_num}: invalid label row {record!r}: {exc}") from None
    return rows
