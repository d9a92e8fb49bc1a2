"""The one reader interface: a sequence of Frames with random access and a length."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator

from perception4d.core.frame import Frame
from perception4d.core.window import Window
from perception4d.errors import WindowError


class SequenceReader(ABC):
    """One recording (a SemanticKITTI sequence, an AV2 log, a nuScenes scene).

    Subclasses index their files at construction (cheap) and read a frame on
    ``__getitem__``; a malformed file raises ``DataFormatError`` naming it.
    """

    #: short name of the format, e.g. "semantickitti"
    format: str = ""

    @property
    @abstractmethod
    def sequence_id(self) -> str: ...

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def _read(self, index: int) -> Frame: ...

    @abstractmethod
    def timestamp_ns(self, index: int) -> int:
        """Timestamp of frame ``index`` without reading its points."""

    def __getitem__(self, index: int) -> Frame:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"{self.format} sequence {self.sequence_id}: frame {index} of {n}")
        return self._read(index % n)

    def __iter__(self) -> Iterator[Frame]:
        for i in range(len(self)):
            yield self[i]

    def window(self, end: int, num_frames: int) -> Window:
        """Frames ``end - num_frames + 1 .. end`` (oldest first), shortened at the start of the sequence."""
        n = len(self)
        if not 0 <= end < n:
            raise WindowError(f"{self.format} sequence {self.sequence_id}: window end {end} outside 0..{n - 1}")
        start = max(0, end - num_frames + 1)
        return Window(tuple(self[i] for i in range(start, end + 1)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.sequence_id!r}, {len(self)} frames)"
