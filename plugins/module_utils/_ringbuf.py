# -*- coding: utf-8 -*-
# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Batch reader of a BPF_MAP_TYPE_RINGBUF through mmap, like libbpf's
ring_buffer__consume(), in the standard library only.

Why not BCC's callback reader: it costs a Python call (and often a wakeup) per
record and tops out at 150-200 k records/s (docs/LAB-NOTES). Here a drain reads
the producer position once, walks every committed record in the shared pages,
copies the payloads out and publishes the new consumer position once: no system
call per record. The kernel side submits with BPF_RB_NO_WAKEUP and forces a
wakeup every N records, so callers wait with a short timeout (wait()) and drain
on every tick whether or not they were woken.

Kernel memory layout of a ring buffer map (kernel/bpf/ringbuf.c):

    offset 0             consumer page: u64 consumer_pos  (user writable)
    offset page_size     producer page: u64 producer_pos  (read-only)
    offset 2*page_size   data pages, max_entries bytes, mapped twice in a row
                         so a record that wraps around is contiguous

Each record: u32 len (bit 31 BUSY: reserved, not committed yet; bit 30
DISCARD: skip it), u32 page offset (kernel use), then ``len`` bytes of payload;
records start 8-byte aligned. Positions only grow; ``pos & (max_entries - 1)``
is the offset in the data area.

Memory ordering: the kernel publishes a record with a release store of its
header after writing the payload. x86-64 (TSO) never reorders loads with
loads, so reading the header before the payload is enough there. Python gives
no acquire loads; on weakly ordered CPUs (arm64) the interpreter's thousands of
instructions between reading a header and copying its payload are far beyond
any reorder window, which is what this reader relies on.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import select
import struct

try:
    from . import _bpf_syscall
except ImportError:
    # The agent runs copies of these files as plain sibling modules.
    import _bpf_syscall

__all__ = ["RingBuffer", "RINGBUF_BUSY_BIT", "RINGBUF_DISCARD_BIT", "RINGBUF_HEADER_SIZE"]

RINGBUF_BUSY_BIT = 1 << 31
RINGBUF_DISCARD_BIT = 1 << 30
RINGBUF_HEADER_SIZE = 8
_LENGTH_MASK = ~(RINGBUF_BUSY_BIT | RINGBUF_DISCARD_BIT) & 0xFFFFFFFF
_MAP_TYPE_RINGBUF = 27

# Positions and headers are shared with the kernel and must be read and written
# whole. Reads use the native struct formats, a fixed-size memcpy that compiles
# to one aligned load (the standard "=Q" format is assembled byte by byte).
# The consumer position is written through a ctypes cell, never with
# struct.pack_into: pack_into first zeroes its target and then writes the value,
# and a producer that reads the position in between sees 0, concludes that the
# ring is full and drops the record (measured: about 1 record in 5,000 lost at
# 100 k records/s with the ring nearly empty).
_U64 = struct.Struct("Q")
_U32 = struct.Struct("I")


class RingBuffer(object):
    """Reader of one ring buffer map.

    ``RingBuffer(fd)`` duplicates ``fd`` (the caller keeps and closes its own) and
    maps the consumer page read-write and the producer page plus the doubled data
    area read-only. Use it as a context manager or call close().
    """

    def __init__(self, fd):
        info = _bpf_syscall.map_info(fd)
        if info["type"] != _MAP_TYPE_RINGBUF:
            raise ValueError("map id %d (%s) is of type %d, not a ring buffer (%d)"
                             % (info["id"], info["name"], info["type"], _MAP_TYPE_RINGBUF))
        self.map_id = info["id"]
        self.size = info["max_entries"]      # data bytes, a power of two multiple of the page size
        self._mask = self.size - 1
        self._page_size = mmap.PAGESIZE
        self._fd = os.dup(fd)
        self._consumer = None
        self._consumer_position = None
        self._producer = None
        self._epoll = None
        try:
            self._consumer = mmap.mmap(self._fd, self._page_size, mmap.MAP_SHARED,
                                       mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
            self._consumer_position = ctypes.c_uint64.from_buffer(self._consumer, 0)
            self._producer = mmap.mmap(self._fd, self._page_size + 2 * self.size, mmap.MAP_SHARED,
                                       mmap.PROT_READ, offset=self._page_size)
            self._epoll = select.epoll()
            self._epoll.register(self._fd, select.EPOLLIN)
        except BaseException:
            self.close()
            raise

    # -- positions --------------------------------------------------------------

    @property
    def consumer_position(self):
        return self._consumer_position.value

    @property
    def producer_position(self):
        return _U64.unpack_from(self._producer, 0)[0]

    def available_bytes(self):
        """Bytes between the consumer and producer positions: committed, busy and
        discarded records alike (0 means nothing to read)."""
        return _U64.unpack_from(self._producer, 0)[0] - self._consumer_position.value

    def fileno(self):
        """The ring buffer fd, for callers that multiplex several buffers in one epoll."""
        return self._fd

    # -- reading ---------------------------------------------------------------

    def drain(self, max_records=None):
        """Copy out committed records, oldest first, and release their space.

        Returns a list of bytes objects (the payloads; discarded records are
        skipped and do not count towards ``max_records``). Stops at the first
        record still being written (BUSY) and at the producer position read on
        entry; the consumer position is stored once, at the end of the batch.
        """
        data = self._producer
        consumer_pos = self._consumer_position.value
        producer_pos = _U64.unpack_from(data, 0)[0]
        if consumer_pos >= producer_pos:
            return []
        limit = max_records if max_records is not None else -1
        records = []
        append = records.append
        read_u32 = _U32.unpack_from
        mask = self._mask
        data_start = self._page_size          # data area offset inside the read-only mapping
        position = consumer_pos
        while position < producer_pos:
            header_offset = data_start + (position & mask)
            length = read_u32(data, header_offset)[0]
            if length & RINGBUF_BUSY_BIT:
                break                           # the producer has not committed it yet
            payload_length = length & _LENGTH_MASK
            if not length & RINGBUF_DISCARD_BIT:
                payload_offset = header_offset + RINGBUF_HEADER_SIZE
                append(data[payload_offset:payload_offset + payload_length])
            position += (payload_length + RINGBUF_HEADER_SIZE + 7) & ~7
            if len(records) == limit:
                break
        if position != consumer_pos:
            # Publish once per batch, in one store: the kernel reuses the space
            # from here on.
            self._consumer_position.value = position
        return records

    def peek(self, max_bytes):
        """``(position, span)``: a copy of up to ``max_bytes`` of the data area from the
        consumer position on, records and their headers as the kernel laid them out
        (committed, BUSY or discarded), without releasing anything.

        The data area is mapped twice in a row, so a span that wraps around the end of
        the ring is contiguous. Walk it (_records.LineEncoder.encode), check it with
        copy_at(), then hand the space back with release(). Until then the kernel keeps
        the records, so a reader that dies before release() finds them again.
        """
        consumer_pos = self._consumer_position.value
        available = _U64.unpack_from(self._producer, 0)[0] - consumer_pos
        if available <= 0:
            return consumer_pos, b""
        start = self._page_size + (consumer_pos & self._mask)
        return consumer_pos, self._producer[start:start + min(available, max_bytes)]

    def copy_at(self, position, length):
        """A fresh copy of ``length`` bytes at ring position ``position`` (not yet released).

        Why a second copy: the kernel writes a record, then clears BUSY in its header with
        a release store, but one memcpy of a span gives no order between the loads of a
        header and of the payload after it (glibc copies the tail of a large block
        first). A span whose headers said "committed" may hold a payload read just before
        the commit. A copy made after the walk reads every such payload after its commit;
        when both copies are equal (memcmp, nearly always) the walk stands.
        """
        start = self._page_size + (position & self._mask)
        return self._producer[start:start + length]

    def release(self, position):
        """Hand the space before ring position ``position`` back to the kernel (one store)."""
        self._consumer_position.value = position

    def wait(self, timeout_s):
        """Wait up to ``timeout_s`` seconds for data; True when some is there.

        Returns at once when records are already pending, so a producer that
        submits without wakeups (BPF_RB_NO_WAKEUP) is still seen on the next
        timed call.
        """
        if self.available_bytes():
            return True
        self._epoll.poll(timeout_s)
        return self.available_bytes() > 0

    # -- lifetime --------------------------------------------------------------

    def close(self):
        # The ctypes cell holds a buffer export of the consumer mapping, which
        # could not be closed while it exists.
        self._consumer_position = None
        for attribute in ("_epoll", "_producer", "_consumer"):
            resource = getattr(self, attribute, None)
            if resource is not None:
                resource.close()
                setattr(self, attribute, None)
        if getattr(self, "_fd", None) is not None:
            _bpf_syscall.close_fd(self._fd)
            self._fd = None

    @property
    def closed(self):
        return self._fd is None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
