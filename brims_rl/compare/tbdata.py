"""Read scalar series from the TensorBoard event files of a run folder, with TensorBoard's own record reader.

An event file is a sequence of TFRecords (length, its masked CRC-32C, one serialized `Event`, the payload's masked
CRC-32C). TensorBoard's reader checks both checksums and raises a data-loss error when one fails, so a corrupt file is
reported instead of silently giving wrong numbers. A truncated last record (a run still writing, or killed
mid-write) is normal and ends the file quietly. (TensorBoard's EventFileLoader would swallow both cases alike; the
record reader underneath it tells them apart.)

A resumed run has several event files. They are merged in the order they were started: a later file supersedes every
value an earlier file logged at or after its first step (the step the run resumed from, or the `purge_step` given to
`SummaryWriter`, when there is one), so a stretch of training that was lost in a crash and then redone counts once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from brims_rl.errors import UserError

EVENT_FILE_PATTERN = "events.out.tfevents.*"


def iter_records(path: Path):
    """Yield the payload of every complete record; raise UserError if a checksum fails (a corrupt file)."""
    from tensorboard.compat.tensorflow_stub import errors
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import PyRecordReader_New

    try:
        reader = PyRecordReader_New(str(path))
    except (OSError, errors.OpError) as exc:
        raise UserError(f"cannot read event file {path}: {getattr(exc, 'message', None) or exc}") from None
    try:
        while True:
            try:
                reader.GetNext()
            except errors.OutOfRangeError:  # end of file
                return
            except errors.DataLossError as exc:
                if "truncated record" in exc.message:  # the last record was cut short: a run still writing or killed
                    return
                raise UserError(f"event file {path} is corrupt (a record failed its CRC-32C check)") from None
            except OSError as exc:
                raise UserError(f"cannot read event file {path}: {exc.strerror or exc}") from None
            yield reader.record()
    finally:
        reader.file_handle.close()


@dataclass
class EventFile:
    """The scalars of one event file."""

    path: Path
    wall_time: float = float("inf")  # of the first event: when the writer started
    purge_step: int | None = None  # step of a SessionLog START event (SummaryWriter(purge_step=...))
    scalars: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    @property
    def first_step(self) -> int | None:
        """From which step on this file supersedes earlier files."""
        if self.purge_step is not None:
            return self.purge_step
        return min((step for points in self.scalars.values() for step, _ in points), default=None)


def read_event_file(path: Path) -> EventFile:
    from google.protobuf.message import DecodeError
    from tensorboard.compat.proto import event_pb2

    result = EventFile(Path(path))
    for payload in iter_records(path):
        try:
            event = event_pb2.Event.FromString(payload)
        except DecodeError:
            raise UserError(f"event file {path} is corrupt (a record is not a TensorBoard event)") from None
        if result.wall_time == float("inf"):
            result.wall_time = event.wall_time
        if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
            result.purge_step = int(event.step)
        if not event.HasField("summary"):
            continue
        for value in event.summary.value:
            number = _scalar(value)
            if number is not None:
                result.scalars.setdefault(value.tag, []).append((int(event.step), number))
    return result


def _scalar(value) -> float | None:
    kind = value.WhichOneof("value")
    if kind == "simple_value":
        return float(value.simple_value)
    if kind == "tensor" and value.metadata.plugin_data.plugin_name == "scalars":
        from tensorboard.util import tensor_util

        array = tensor_util.make_ndarray(value.tensor)
        if array.size == 1:
            return float(array.reshape(()))
    return None


def event_files(run_dir: Path) -> list[Path]:
    return sorted(p for p in Path(run_dir).glob(EVENT_FILE_PATTERN) if p.is_file())


@dataclass
class Series:
    steps: np.ndarray  # int64, non-decreasing
    values: np.ndarray  # float64

    def __len__(self) -> int:
        return len(self.steps)


def read_run_scalars(run_dir: Path) -> dict[str, Series]:
    """Every scalar tag of a run folder (all its event files merged, see the module docstring), sorted by step."""
    files = sorted((read_event_file(p) for p in event_files(run_dir)), key=lambda f: (f.wall_time, f.path.name))
    merged: dict[str, list[tuple[int, float]]] = {}
    for file in files:
        start = file.first_step
        if start is not None:
            for tag, points in merged.items():
                merged[tag] = [point for point in points if point[0] < start]
        for tag, points in file.scalars.items():
            merged.setdefault(tag, []).extend(points)
    series = {}
    for tag, points in merged.items():
        if not points:
            continue
        steps = np.array([step for step, _ in points], dtype=np.int64)
        values = np.array([value for _, value in points], dtype=np.float64)
        order = np.argsort(steps, kind="stable")  # episodes that end at the same step keep their logged order
        series[tag] = Series(steps[order], values[order])
    return series
