"""Host memory that a process worker's outputs travel through, written by the device and read in place.

A process worker's outputs reach the caller without a copy on the host:

* ``HostArena``: one contiguous buffer a step's outputs are copied into by the device (``HostCopies.put``
  allocates from it, bump style, reset for every frame). A process worker's arenas are shared memory that the
  caller maps too, page-locked for the device (``cudaHostRegister``); where registration is refused the copies
  are pageable (slower, the same values).
* ids: the caller hands every job the id of an arena no result views any more (``ReplyPool.acquire``); the
  worker's outputs land in that arena (``ReplyArenas.bind``) and the results it sends back name their arrays
  by place (``WireArray``); arrays the step made on the host (not in the arena) are copied into the id's
  spill buffer, small ones travel with the message.
* ``ReplyPool.decode``: the results' arrays become views of the arena (writable, no copy) that hold a lease
  on it; the id is free again once every such array is garbage. A caller that keeps more than
  ``max_leased`` replies alive gets copies of the arrays from then on (the id is freed at once), so the
  number of arenas stays bounded by the frames in flight plus ``max_leased``.

Each buffer travels to the other side once: when it is new (first use of an id, or grown).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import threading
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

log = logging.getLogger("perception4d.runtime")

#: offsets of arrays in an arena or spill buffer are multiples of this
ALIGN = 256
#: headroom of a new buffer over the demand that needed it
GROWTH = 1.25
#: arrays from this size on travel in the id's buffers; smaller ones are pickled with the message
INLINE_MAX_BYTES = 16 * 1024
BUFFERS = ("arena", "spill")


def round_up(n: int, quantum: int = ALIGN) -> int:
    return -(-int(n) // quantum) * quantum


def shared_bytes(nbytes: int) -> torch.Tensor:
    """A 1-D uint8 CPU tensor of at least ``nbytes`` in shared memory (sent to another process, it maps the same
    pages instead of copying them)."""
    return torch.empty(max(int(nbytes), 4096), dtype=torch.uint8).share_memory_()


def _cudart_ok(err) -> bool:
    return int(getattr(err, "value", err)) == 0


def register_host(buffer: torch.Tensor) -> bool:
    """Page-lock ``buffer`` (host memory not from the pinned allocator) for asynchronous device copies."""
    try:
        err = torch.cuda.cudart().cudaHostRegister(buffer.data_ptr(), buffer.numel(), 0)
        if _cudart_ok(err):
            return True
        reason = str(err)
    except Exception as exc:  # noqa: BLE001 - an unregistered buffer still works (pageable copies)
        reason = f"{type(exc).__name__}: {exc}"
    log.warning("cudaHostRegister refused (%s): the reply arena's device copies are pageable (slower)", reason)
    return False


def unregister_host(buffer: torch.Tensor) -> None:
    try:
        torch.cuda.cudart().cudaHostUnregister(buffer.data_ptr())
    except Exception as exc:  # noqa: BLE001 - the buffer is dropped right after
        log.info("cudaHostUnregister: %s", exc)


class HostArena:
    """One frame's outputs on the host: a 1-D uint8 buffer, bump-allocated (see the module docstring).

    ``alloc`` returns a typed view or None when the arena is full (the caller then uses a buffer of its own);
    ``needed`` is what the frame asked for in all, so the owner can grow the arena before it is used again.
    """

    def __init__(self, nbytes: int, device: torch.device | str = "cpu", shared: bool = True):
        self.device = torch.device(device)
        cuda = self.device.type == "cuda"
        self.buffer = shared_bytes(nbytes) if shared else torch.empty(max(int(nbytes), 4096), dtype=torch.uint8,
                                                                      pin_memory=cuda)
        self.registered = shared and cuda and register_host(self.buffer)
        self._base = self.buffer.data_ptr()
        self.used = self.needed = 0

    @property
    def capacity(self) -> int:
        return int(self.buffer.numel())

    def reset(self) -> None:
        self.used = self.needed = 0

    def alloc(self, dtype: torch.dtype, shape) -> torch.Tensor | None:
        shape = tuple(int(s) for s in shape)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        self.needed = round_up(self.needed) + nbytes
        start = round_up(self.used)
        if start + nbytes > self.capacity:
            return None
        self.used = start + nbytes
        return self.buffer[start:start + nbytes].view(dtype).view(shape)

    def offset_of(self, a: np.ndarray) -> int | None:
        """Where a C-contiguous array lies in the arena (None: it does not)."""
        if not a.flags.c_contiguous:
            return None
        offset = a.__array_interface__["data"][0] - self._base
        return offset if 0 <= offset and offset + a.nbytes <= self.capacity else None

    def close(self) -> None:
        if self.registered:
            unregister_host(self.buffer)
            self.registered = False


@dataclass
class WireArray:
    """An array's place in one of a reply id's buffers (``BUFFERS``)."""

    buffer: str
    offset: int
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize

    def view(self, raw: np.ndarray) -> np.ndarray:
        return raw[self.offset:self.offset + self.nbytes].view(np.dtype(self.dtype)).reshape(self.shape)


def map_arrays(obj, fn):
    """``obj`` with ``fn`` applied to every numpy array / ``WireArray`` inside dataclasses, lists and dicts
    (containers with nothing changed are returned as they are; dataclasses are copied, not re-validated)."""
    if isinstance(obj, (np.ndarray, WireArray)):
        return fn(obj)
    if isinstance(obj, list):
        return [map_arrays(v, fn) for v in obj]
    if isinstance(obj, dict):
        return {k: map_arrays(v, fn) for k, v in obj.items()}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changed = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            new = map_arrays(value, fn)
            if new is not value:
                changed[f.name] = new
        if not changed:
            return obj
        out = copy.copy(obj)
        for k, v in changed.items():
            object.__setattr__(out, k, v)  # also for frozen dataclasses
        return out
    return obj


# -- the worker's side ------------------------------------------------------------------------------------
class ReplyArenas:
    """A process worker's arenas and spill buffers, by reply id (see the module docstring)."""

    def __init__(self, device: torch.device | str, frame_bytes: int = 1 << 20):
        """``frame_bytes``: one frame's outputs as far as known (the warm-up's); arenas start ``GROWTH`` above."""
        self.device = torch.device(device)
        self.size_hint = round_up(max(int(frame_bytes * GROWTH), 4096))
        self.arenas: dict[int, HostArena] = {}
        self.spills: dict[int, torch.Tensor] = {}
        self._fresh: set[tuple[int, str]] = set()  # buffers the caller has not got yet

    def bind(self, rid: int) -> HostArena:
        """The arena of reply id ``rid`` for the next frame (new, or grown when its last frame did not fit)."""
        arena = self.arenas.get(rid)
        if arena is None or arena.needed > arena.capacity:
            if arena is not None:
                self.size_hint = max(self.size_hint, round_up(arena.needed * GROWTH))
                arena.close()
            arena = self.arenas[rid] = HostArena(self.size_hint, self.device)
            self._fresh.add((rid, "arena"))
        arena.reset()
        return arena

    def encode(self, results, rid: int):
        """The results with their large arrays replaced by ``WireArray``s (in the arena where the device put them,
        copied into the spill buffer otherwise), and the buffers the caller does not have yet."""
        arena = self.arenas[rid]
        self.size_hint = max(self.size_hint, round_up(arena.needed * GROWTH))
        spill_at: dict[int, int] = {}
        end = 0

        def plan(a):
            nonlocal end
            if a.nbytes >= INLINE_MAX_BYTES and a.dtype != object and arena.offset_of(a) is None \
                    and id(a) not in spill_at:
                spill_at[id(a)] = end
                end = round_up(end + a.nbytes)
            return a

        map_arrays(results, plan)
        spill = self.spills.get(rid)
        if end and (spill is None or spill.numel() < end):
            spill = self.spills[rid] = shared_bytes(round_up(end * GROWTH))
            self._fresh.add((rid, "spill"))
        raw = None if spill is None else spill.numpy()

        def place(a):
            if a.nbytes < INLINE_MAX_BYTES or a.dtype == object:
                return a
            offset = arena.offset_of(a)
            if offset is not None:
                return WireArray("arena", offset, a.dtype.str, tuple(a.shape))
            w = WireArray("spill", spill_at[id(a)], a.dtype.str, tuple(a.shape))
            np.copyto(w.view(raw), a)
            return w

        encoded = map_arrays(results, place)
        buffers = {}
        for name, buffer in (("arena", arena.buffer), ("spill", spill)):
            if (rid, name) in self._fresh:
                buffers[name] = buffer
                self._fresh.discard((rid, name))
        return encoded, buffers

    def close(self) -> None:
        for arena in self.arenas.values():
            arena.close()
        self.arenas.clear()


# -- the caller's side ------------------------------------------------------------------------------------
class _Lease:
    """Held by every array of one decoded reply; when the last of them is garbage, the reply id is free."""

    __slots__ = ("_release", "_rid", "__weakref__")

    def __init__(self, release, rid: int):
        self._release, self._rid = release, rid

    def __del__(self):
        try:
            self._release(self._rid)
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


class _Exported:
    """An array's memory in a shared buffer, exported to numpy with the lease (the array's ``base``)."""

    __slots__ = ("__array_interface__", "lease", "raw")

    def __init__(self, raw: np.ndarray, w: WireArray, lease: _Lease):
        self.raw, self.lease = raw, lease
        self.__array_interface__ = {"data": (raw.__array_interface__["data"][0] + w.offset, False),
                                    "shape": tuple(w.shape), "typestr": np.dtype(w.dtype).str, "version": 3}


class ReplyPool:
    """The caller's side of one process worker's reply ids (see the module docstring). ``acquire`` and
    ``decode`` run in the caller's thread; leases may end in any thread."""

    def __init__(self, max_leased: int = 4):
        self.max_leased = int(max_leased)
        self._raw: dict[int, dict[str, np.ndarray]] = {}
        self._free: deque[int] = deque()
        self._next = 0
        self._lock = threading.Lock()
        self.leased = 0  # ids viewed by results the caller still holds
        self.copied = 0  # replies copied out because ``max_leased`` ids were leased

    def __len__(self) -> int:
        return self._next

    def acquire(self) -> int:
        with self._lock:
            if self._free:
                return self._free.popleft()
            self._next += 1
            return self._next - 1

    def release(self, rid: int) -> None:
        """A reply id given back without decoding (its job failed)."""
        with self._lock:
            self._free.append(rid)

    def _lease_ended(self, rid: int) -> None:
        with self._lock:
            self.leased -= 1
            self._free.append(rid)

    def decode(self, results, rid: int, buffers: dict[str, torch.Tensor] | None = None):
        """The results with their ``WireArray``s as leased views of the id's buffers (copies past
        ``max_leased``)."""
        raws = self._raw.setdefault(rid, {})
        for name, buffer in (buffers or {}).items():
            raws[name] = buffer.numpy()
        with self._lock:
            lend = self.leased < self.max_leased
            self.leased += lend
        if not lend:
            self.copied += 1
            out = map_arrays(results, lambda a: np.array(a.view(raws[a.buffer])) if isinstance(a, WireArray) else a)
            self.release(rid)
            return out
        lease = _Lease(self._lease_ended, rid)
        return map_arrays(results, lambda a: np.asarray(_Exported(raws[a.buffer], a, lease))
                          if isinstance(a, WireArray) else a)
