# -*- coding: utf-8 -*-
# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Raw bpf(2) calls through ctypes: pinned objects, map operations, object info.

Self-contained on purpose (standard library only, no imports of other project
modules): the agent installs a copy of this file next to itself, and the facts
module must not load BCC (LLVM, about 200 MB) just to read a few maps.

Every function takes and returns plain file descriptors (ints). Callers own the
descriptors they get and must close them: use ``open_pinned()`` / ``fd_closing()``
as context managers to make that reliable.

Only Linux is supported. The attribute layouts follow ``union bpf_attr`` and
``struct bpf_{map,prog}_info`` of include/uapi/linux/bpf.h; offsets were checked
against the 6.1 UAPI headers, and the kernel accepts these shorter, older
layouts on newer kernels (it zero-extends the attribute it copies in).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import platform
import struct

try:
    from . import _contract
except ImportError:
    # The agent runs copies of these files as plain sibling modules.
    import _contract

__all__ = [
    "BPF_ANY", "BPF_NOEXIST", "BPF_EXIST", "BPF_F_LOCK",
    "BPF_F_RDONLY", "BPF_F_WRONLY", "BPF_F_NO_PREALLOC",
    "MAP_TYPE_HASH", "MAP_TYPE_ARRAY", "MAP_TYPE_PERCPU_HASH", "MAP_TYPE_PERCPU_ARRAY",
    "MAP_TYPE_LPM_TRIE", "MAP_TYPE_RINGBUF",
    "BpfError",
    "obj_get", "obj_pin", "open_pinned", "fd_closing", "close_fd",
    "map_info", "prog_info", "prog_get_fd_by_id", "map_get_fd_by_id",
    "map_create", "map_lookup", "map_update", "map_delete", "map_keys",
    "map_update_batch", "map_update_batch_strict", "map_delete_batch", "map_lookup_batch",
    "map_update_batch_packed", "map_read_all",
    "possible_cpus", "percpu_value_size", "percpu_lookup",
    "prog_test_run", "prog_test_run_flags", "prog_load",
]

# --- constants from include/uapi/linux/bpf.h ---------------------------------

BPF_MAP_CREATE = 0
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_GET_NEXT_KEY = 4
BPF_PROG_LOAD = 5
BPF_OBJ_PIN = 6
BPF_OBJ_GET = 7
BPF_PROG_TEST_RUN = 10
BPF_PROG_GET_FD_BY_ID = 13
BPF_MAP_GET_FD_BY_ID = 14
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_MAP_LOOKUP_BATCH = 24
BPF_MAP_UPDATE_BATCH = 26
BPF_MAP_DELETE_BATCH = 27

_COMMAND_NAMES = {
    BPF_MAP_CREATE: "BPF_MAP_CREATE",
    BPF_MAP_LOOKUP_ELEM: "BPF_MAP_LOOKUP_ELEM",
    BPF_MAP_UPDATE_ELEM: "BPF_MAP_UPDATE_ELEM",
    BPF_MAP_DELETE_ELEM: "BPF_MAP_DELETE_ELEM",
    BPF_MAP_GET_NEXT_KEY: "BPF_MAP_GET_NEXT_KEY",
    BPF_PROG_LOAD: "BPF_PROG_LOAD",
    BPF_OBJ_PIN: "BPF_OBJ_PIN",
    BPF_OBJ_GET: "BPF_OBJ_GET",
    BPF_PROG_TEST_RUN: "BPF_PROG_TEST_RUN",
    BPF_PROG_GET_FD_BY_ID: "BPF_PROG_GET_FD_BY_ID",
    BPF_MAP_GET_FD_BY_ID: "BPF_MAP_GET_FD_BY_ID",
    BPF_OBJ_GET_INFO_BY_FD: "BPF_OBJ_GET_INFO_BY_FD",
    BPF_MAP_LOOKUP_BATCH: "BPF_MAP_LOOKUP_BATCH",
    BPF_MAP_UPDATE_BATCH: "BPF_MAP_UPDATE_BATCH",
    BPF_MAP_DELETE_BATCH: "BPF_MAP_DELETE_BATCH",
}

# Map update flags.
BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2
BPF_F_LOCK = 4

# BPF_OBJ_GET / *_GET_FD_BY_ID open flags, and map creation flags.
BPF_F_NO_PREALLOC = _contract.BPF_F_NO_PREALLOC
BPF_F_RDONLY = 1 << 3
BPF_F_WRONLY = 1 << 4

# Map types: the contract's (uapi/linux/bpf.h enum bpf_map_type).
MAP_TYPE_HASH = _contract.MAP_TYPE_HASH
MAP_TYPE_ARRAY = _contract.MAP_TYPE_ARRAY
MAP_TYPE_PERCPU_HASH = _contract.MAP_TYPE_PERCPU_HASH
MAP_TYPE_PERCPU_ARRAY = _contract.MAP_TYPE_PERCPU_ARRAY
MAP_TYPE_LPM_TRIE = _contract.MAP_TYPE_LPM_TRIE
MAP_TYPE_RINGBUF = _contract.MAP_TYPE_RINGBUF

# The kernel's internal "not supported" errno. It leaks to user space from
# several bpf() paths (batch operations on map types without them, among
# others) and has no name in the errno module.
ENOTSUPP = 524

# Errors after which a batch operation is retried one element at a time: the
# map type (or an older kernel) lacks the batch operation, or one element is
# invalid, in which case the per-element call reports exactly which one.
_BATCH_FALLBACK_ERRNOS = frozenset((errno.EINVAL, errno.EOPNOTSUPP, ENOTSUPP))

# __NR_bpf per architecture (platform.machine() of the running kernel).
_BPF_SYSCALL_NUMBERS = {
    "x86_64": 321,
    "amd64": 321,
    "aarch64": 280,
    "arm64": 280,
    "riscv64": 280,
    "i386": 357,
    "i686": 357,
    "armv7l": 386,
    "ppc64le": 361,
    "s390x": 351,
}

BPF_OBJ_NAME_LEN = 16
BPF_TAG_SIZE = 8

# Attribute layouts (union bpf_attr members), little and big endian alike:
# native byte order, pointers passed as u64.
_ATTR_MAP_CREATE = struct.Struct("=IIIIII I16s")       # type..inner_map_fd, numa_node, map_name
_ATTR_MAP_ELEM = struct.Struct("=I4xQQQ")              # map_fd, key, value/next_key, flags
_ATTR_OBJ = struct.Struct("=QII")                      # pathname, bpf_fd, file_flags
_ATTR_GET_FD_BY_ID = struct.Struct("=III")             # id, next_id, open_flags
_ATTR_INFO = struct.Struct("=IIQ")                     # bpf_fd, info_len, info
# in_batch, out_batch, keys, values, count, map_fd, elem_flags, flags
_ATTR_BATCH = struct.Struct("=QQQQIIQQ")
# prog_fd, retval, data_size_in, data_size_out, data_in, data_out, repeat, duration
_ATTR_TEST_RUN = struct.Struct("=IIIIQQII")
_ATTR_TEST_RUN_FLAGS = struct.Struct("=IIIIQQIIIIQQI")     # ... ctx_size_in/out, ctx_in/out, flags
# prog_type, insn_cnt, insns, license, log_level, log_size, log_buf, kern_version, prog_flags,
# prog_name
_ATTR_PROG_LOAD = struct.Struct("=IIQQIIQII16s")
_INSN = struct.Struct("=BBhi")                             # code, dst_reg:4 | src_reg:4, off, imm

_BATCH_COUNT_OFFSET = 32
_TEST_RUN_RETVAL_OFFSET = 4
_TEST_RUN_SIZE_OUT_OFFSET = 12
_TEST_RUN_DURATION_OFFSET = 36

_MAP_INFO = struct.Struct("=IIIIII16s")                 # type, id, key/value size, max_entries, flags, name
_MAP_INFO_SIZE = 88                                     # sizeof(struct bpf_map_info) in 6.x
_PROG_INFO_HEAD = struct.Struct("=II8s")                # type, id, tag
_PROG_INFO_NAME_OFFSET = 64
_PROG_INFO_RUN_TIME_OFFSET = 192                        # run_time_ns, run_cnt (u64 each), since 5.1
_PROG_INFO_XLATED_LEN_OFFSET = 20                       # xlated_prog_len (bytes, 8 per instruction)
_PROG_INFO_VERIFIED_OFFSET = 216                        # verified_insns, since 5.16
_PROG_INFO_SIZE = 232                                   # sizeof(struct bpf_prog_info) in 6.x
_U64_PAIR = struct.Struct("=QQ")


class BpfError(OSError):
    """A failed bpf(2) call: ``errno`` is set and the message names the operation
    and, when there is one, the pinned path or the object it acted on.

    Errors of the batch functions carry ``elements_done``: how many elements
    were written or deleted before the failure.
    """

    def __init__(self, err, operation, path=None, detail=None):
        if err == ENOTSUPP:
            reason = "Operation not supported (ENOTSUPP)"
        else:
            reason = os.strerror(err)
        message = operation
        if path is not None:
            message += " " + str(path)
        if detail:
            message += " (" + detail + ")"
        super().__init__(err, message + ": " + reason)
        self.operation = operation
        self.path = path


# --- the system call ---------------------------------------------------------

_libc = None
_syscall_number = None


def _bpf_syscall_number():
    machine = platform.machine()
    number = _BPF_SYSCALL_NUMBERS.get(machine)
    if number is None:
        raise BpfError(errno.ENOSYS, "bpf()", detail="unsupported architecture " + machine)
    return number


def _load_libc():
    global _libc, _syscall_number
    if _libc is None:
        _syscall_number = _bpf_syscall_number()
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        libc.syscall.argtypes = (ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_uint)
        _libc = libc
    return _libc


def bpf(command, attr, path=None, detail=None):
    """Call bpf(command, attr, sizeof attr) and return its non-negative result.

    ``attr`` is a writable ctypes buffer (``ctypes.create_string_buffer``) that
    the kernel may update (batch counts, test-run results).
    Raises BpfError naming the command (and ``path`` or ``detail``) on failure.
    """
    libc = _load_libc()
    while True:
        result = libc.syscall(_syscall_number, command, ctypes.addressof(attr), ctypes.sizeof(attr))
        if result >= 0:
            return result
        err = ctypes.get_errno()
        # A signal may interrupt long operations (batch updates of big maps).
        if err != errno.EINTR:
            raise BpfError(err, _COMMAND_NAMES.get(command, "bpf(%d)" % command), path, detail)


def _attr(layout, *values):
    buffer = ctypes.create_string_buffer(layout.size)
    layout.pack_into(buffer, 0, *values)
    return buffer


def _address(buffer):
    return ctypes.addressof(buffer) if buffer is not None else 0


def _writable(data, size, what):
    """Copy ``data`` into a fresh C buffer of exactly ``size`` bytes."""
    data = bytes(data)
    if len(data) != size:
        raise ValueError("%s must be %d bytes, got %d" % (what, size, len(data)))
    return ctypes.create_string_buffer(data, size)


# --- file descriptors ----------------------------------------------------------

def close_fd(fd):
    """Close ``fd``, ignoring an already closed descriptor."""
    try:
        os.close(fd)
    except OSError as error:
        if error.errno != errno.EBADF:
            raise


@contextlib.contextmanager
def fd_closing(fd):
    """``with fd_closing(map_get_fd_by_id(7)) as fd: ...`` closes fd on exit."""
    try:
        yield fd
    finally:
        close_fd(fd)


@contextlib.contextmanager
def open_pinned(path, flags=0):
    """``with open_pinned('/sys/fs/bpf/...') as fd: ...``: BPF_OBJ_GET, closed on exit."""
    fd = obj_get(path, flags)
    try:
        yield fd
    finally:
        close_fd(fd)


# --- pinned objects ------------------------------------------------------------

def obj_get(path, flags=0):
    """Open a pinned program or map (BPF_OBJ_GET) and return a new fd.

    ``flags`` may be BPF_F_RDONLY or BPF_F_WRONLY for maps.
    """
    encoded = ctypes.create_string_buffer(os.fsencode(path))
    attr = _attr(_ATTR_OBJ, ctypes.addressof(encoded), 0, flags)
    return bpf(BPF_OBJ_GET, attr, path=path)


def obj_pin(fd, path):
    """Pin the object behind ``fd`` at ``path`` in a bpffs (BPF_OBJ_PIN).

    Fails with EEXIST when the path exists: unpin (os.unlink) first to replace.
    """
    encoded = ctypes.create_string_buffer(os.fsencode(path))
    attr = _attr(_ATTR_OBJ, ctypes.addressof(encoded), fd, 0)
    bpf(BPF_OBJ_PIN, attr, path=path)


def prog_get_fd_by_id(prog_id):
    """A new fd for the loaded program with this id (BPF_PROG_GET_FD_BY_ID)."""
    return bpf(BPF_PROG_GET_FD_BY_ID, _attr(_ATTR_GET_FD_BY_ID, prog_id, 0, 0), detail="prog id %d" % prog_id)


def map_get_fd_by_id(map_id, flags=0):
    """A new fd for the map with this id (BPF_MAP_GET_FD_BY_ID)."""
    return bpf(BPF_MAP_GET_FD_BY_ID, _attr(_ATTR_GET_FD_BY_ID, map_id, 0, flags), detail="map id %d" % map_id)


def _object_info(fd, size):
    info = ctypes.create_string_buffer(size)
    attr = _attr(_ATTR_INFO, fd, size, ctypes.addressof(info))
    bpf(BPF_OBJ_GET_INFO_BY_FD, attr, detail="fd %d" % fd)
    # The kernel writes back how much it filled: older kernels fill less.
    filled = struct.unpack_from("=I", attr, 4)[0]
    return info.raw, filled


def _c_string(raw):
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def map_info(fd):
    """Map type, id, key/value sizes, max_entries, flags and name of a map fd."""
    raw, _filled = _object_info(fd, _MAP_INFO_SIZE)
    map_type, map_id, key_size, value_size, max_entries, map_flags, name = _MAP_INFO.unpack_from(raw)
    return {
        "type": map_type,
        "id": map_id,
        "key_size": key_size,
        "value_size": value_size,
        "max_entries": max_entries,
        "map_flags": map_flags,
        "name": _c_string(name),
    }


def prog_info(fd):
    """Type, id, tag (16 hex digits, as bpftool shows it), name, instruction count and
    verified instruction count of a program fd.

    ``run_time_ns`` and ``run_cnt`` are present when the kernel reports them; they
    only count while BPF statistics are enabled (sysctl kernel.bpf_stats_enabled).
    """
    raw, filled = _object_info(fd, _PROG_INFO_SIZE)
    prog_type, prog_id, tag = _PROG_INFO_HEAD.unpack_from(raw)
    info = {
        "id": prog_id,
        "type": prog_type,
        "tag": tag.hex(),
        "name": _c_string(raw[_PROG_INFO_NAME_OFFSET:_PROG_INFO_NAME_OFFSET + BPF_OBJ_NAME_LEN]),
    }
    if filled >= _PROG_INFO_RUN_TIME_OFFSET + _U64_PAIR.size:
        info["run_time_ns"], info["run_cnt"] = _U64_PAIR.unpack_from(raw, _PROG_INFO_RUN_TIME_OFFSET)
    # Instructions after the verifier's rewrites, and how many it processed to accept the program.
    info["xlated_insns"] = struct.unpack_from("=I", raw, _PROG_INFO_XLATED_LEN_OFFSET)[0] // 8
    if filled >= _PROG_INFO_VERIFIED_OFFSET + 4:
        info["verified_insns"] = struct.unpack_from("=I", raw, _PROG_INFO_VERIFIED_OFFSET)[0]
    return info


# --- maps ----------------------------------------------------------------------

def map_create(map_type, key_size, value_size, max_entries, map_flags=0, name=""):
    """Create a map and return its fd (mostly for tests and tools; the policy
    module creates its maps through BCC)."""
    encoded_name = name.encode("ascii")[:BPF_OBJ_NAME_LEN - 1]
    attr = _attr(_ATTR_MAP_CREATE, map_type, key_size, value_size, max_entries, map_flags, 0, 0, encoded_name)
    return bpf(BPF_MAP_CREATE, attr, detail="type %d %s" % (map_type, name or "(no name)"))


def map_lookup(fd, key, value_size):
    """The value stored under ``key``, or None when there is none.

    For per-CPU maps ``value_size`` must cover all CPUs: use percpu_lookup().
    For LPM tries the kernel returns the longest matching prefix's value, not an
    exact-match lookup.
    """
    key_buffer = ctypes.create_string_buffer(bytes(key), len(key))
    value_buffer = ctypes.create_string_buffer(value_size)
    attr = _attr(_ATTR_MAP_ELEM, fd, ctypes.addressof(key_buffer), ctypes.addressof(value_buffer), 0)
    try:
        bpf(BPF_MAP_LOOKUP_ELEM, attr, detail="map fd %d" % fd)
    except BpfError as error:
        if error.errno == errno.ENOENT:
            return None
        raise
    return value_buffer.raw


def map_update(fd, key, value, flags=BPF_ANY):
    """Insert or replace (BPF_ANY), insert only (BPF_NOEXIST) or replace only (BPF_EXIST)."""
    key_buffer = ctypes.create_string_buffer(bytes(key), len(key))
    value_buffer = ctypes.create_string_buffer(bytes(value), len(value))
    attr = _attr(_ATTR_MAP_ELEM, fd, ctypes.addressof(key_buffer), ctypes.addressof(value_buffer), flags)
    bpf(BPF_MAP_UPDATE_ELEM, attr, detail="map fd %d" % fd)


def map_delete(fd, key):
    """Delete ``key``; True when it was there, False when absent."""
    key_buffer = ctypes.create_string_buffer(bytes(key), len(key))
    attr = _attr(_ATTR_MAP_ELEM, fd, ctypes.addressof(key_buffer), 0, 0)
    try:
        bpf(BPF_MAP_DELETE_ELEM, attr, detail="map fd %d" % fd)
    except BpfError as error:
        if error.errno == errno.ENOENT:
            return False
        raise
    return True


def map_keys(fd, key_size):
    """Iterate over the keys of a map (BPF_MAP_GET_NEXT_KEY).

    The first call passes a NULL key, which every map type (LPM tries included,
    where a made-up "first" key would not work) answers with its first key.
    Keys are yielded as bytes. As with any get-next-key walk, a key deleted
    concurrently may make a hash map restart from its beginning.
    """
    current = None
    next_buffer = ctypes.create_string_buffer(key_size)
    while True:
        attr = _attr(_ATTR_MAP_ELEM, fd, _address(current), ctypes.addressof(next_buffer), 0)
        try:
            bpf(BPF_MAP_GET_NEXT_KEY, attr, detail="map fd %d" % fd)
        except BpfError as error:
            if error.errno == errno.ENOENT:
                return
            raise
        key = next_buffer.raw
        yield key
        current = ctypes.create_string_buffer(key, key_size)


def _packed(items, what):
    """Concatenate equally sized byte strings into one C array; returns (buffer, item size)."""
    items = [bytes(item) for item in items]
    size = len(items[0])
    for index, item in enumerate(items):
        if len(item) != size:
            raise ValueError("%s[%d] is %d bytes, expected %d like %s[0]" % (what, index, len(item), size, what))
    joined = b"".join(items)
    return ctypes.create_string_buffer(joined, len(joined)), size


# Cleared by the policy module when the kernel has no batch map operations or the
# map_batch_ops feature is masked: every batch function then takes its per-element path
# at once, the path such a kernel takes after its first refused batch call.
batch_ops_enabled = True


def _batch_call(command, attr, detail):
    if not batch_ops_enabled:
        raise BpfError(errno.EOPNOTSUPP, _COMMAND_NAMES[command], detail=detail + ", batch operations switched off")
    return bpf(command, attr, detail=detail)


def _batch_attr(fd, keys_buffer, values_buffer, count, elem_flags):
    return _attr(_ATTR_BATCH, 0, 0, _address(keys_buffer), _address(values_buffer), count, fd, elem_flags, 0)


def _batch_done(attr, submitted):
    """Elements a failed batch call processed before it stopped.

    The kernel writes ``count`` back only once it has walked elements; when it
    refuses the call up front (no batch support: ENOTSUPP, bad attributes:
    EINVAL) the field still holds what we submitted, which then means none.
    """
    done = struct.unpack_from("=I", attr, _BATCH_COUNT_OFFSET)[0]
    return done if done < submitted else 0


def map_update_batch_strict(fd, keys, values, elem_flags=BPF_ANY):
    """One BPF_MAP_UPDATE_BATCH call and no fallback: the feature probe's question."""
    keys_buffer, _key_size = _packed(keys, "keys")
    values_buffer, _value_size = _packed(values, "values")
    attr = _batch_attr(fd, keys_buffer, values_buffer, len(keys), elem_flags)
    bpf(BPF_MAP_UPDATE_BATCH, attr, detail="map fd %d, %d elements" % (fd, len(keys)))
    return len(keys)


def map_update_batch(fd, keys, values, elem_flags=BPF_ANY):
    """Write many elements with BPF_MAP_UPDATE_BATCH; returns how many were written.

    Map types or kernels without the batch operation (EINVAL/ENOTSUPP) get one
    BPF_MAP_UPDATE_ELEM per element from where the batch stopped, so an invalid
    element raises a BpfError of its own instead of failing the whole batch
    silently. Hash, array and (on 6.x) LPM trie maps support the batch call.
    """
    keys = list(keys)
    values = list(values)
    if len(keys) != len(values):
        raise ValueError("map_update_batch: %d keys but %d values" % (len(keys), len(values)))
    if not keys:
        return 0
    keys_buffer, _key_size = _packed(keys, "keys")
    values_buffer, _value_size = _packed(values, "values")
    attr = _batch_attr(fd, keys_buffer, values_buffer, len(keys), elem_flags)
    try:
        _batch_call(BPF_MAP_UPDATE_BATCH, attr, detail="map fd %d, %d elements" % (fd, len(keys)))
        return len(keys)
    except BpfError as error:
        done = _batch_done(attr, len(keys))
        if error.errno not in _BATCH_FALLBACK_ERRNOS:
            error.elements_done = done
            raise
    for index in range(done, len(keys)):
        try:
            map_update(fd, keys[index], values[index], elem_flags)
        except BpfError as error:
            detail = "map fd %d, element %d of the batch, key %s" % (fd, index, keys[index].hex())
            element_error = BpfError(error.errno, "BPF_MAP_UPDATE_ELEM", detail=detail)
            element_error.elements_done = index
            raise element_error from error
    return len(keys)


def map_delete_batch(fd, keys):
    """Delete many keys with BPF_MAP_DELETE_BATCH; returns how many existed.

    Absent keys are skipped (the kernel stops a batch at the first ENOENT, so the
    rest is resubmitted). Falls back to one BPF_MAP_DELETE_ELEM per key when the
    map type has no batch delete (EINVAL/ENOTSUPP).
    """
    keys = list(keys)
    if not keys:
        return 0
    keys_buffer, key_size = _packed(keys, "keys")
    base = ctypes.addressof(keys_buffer)
    start = 0
    deleted = 0
    while start < len(keys):
        remaining = len(keys) - start
        attr = _attr(_ATTR_BATCH, 0, 0, base + start * key_size, 0, remaining, fd, 0, 0)
        try:
            _batch_call(BPF_MAP_DELETE_BATCH, attr, detail="map fd %d, %d keys" % (fd, remaining))
            return deleted + remaining
        except BpfError as error:
            done = _batch_done(attr, remaining)
            deleted += done
            if error.errno == errno.ENOENT:
                start += done + 1           # skip the absent key and go on
                continue
            if error.errno in _BATCH_FALLBACK_ERRNOS:
                start += done
                break
            error.elements_done = deleted
            raise
    for key in keys[start:]:
        if map_delete(fd, key):
            deleted += 1
    return deleted


# Elements per batch call: big enough that the syscall cost vanishes, small enough that one
# call never holds a big copy of the keys in the kernel or blocks signals for long.
BATCH_CHUNK = 131072


def map_update_batch_packed(fd, keys, values, key_size, value_size, elem_flags=BPF_ANY, chunk=BATCH_CHUNK):
    """BPF_MAP_UPDATE_BATCH from packed buffers (``keys``: count * key_size bytes, ``values``:
    count * value_size bytes), in chunks; returns how many elements were written.

    Falls back to map_update_batch() (and through it to one update per element) on kernels
    or map types without the batch operation.
    """
    keys = bytes(keys)
    values = bytes(values)
    count = len(keys) // key_size
    if len(keys) != count * key_size or len(values) != count * value_size:
        raise ValueError("map_update_batch_packed: %d key bytes and %d value bytes are not %d elements of %d+%d"
                         % (len(keys), len(values), count, key_size, value_size))
    done = 0
    while done < count:
        size = min(chunk, count - done)
        keys_buffer = ctypes.create_string_buffer(keys[done * key_size:(done + size) * key_size], size * key_size)
        values_buffer = ctypes.create_string_buffer(values[done * value_size:(done + size) * value_size],
                                                    size * value_size)
        attr = _batch_attr(fd, keys_buffer, values_buffer, size, elem_flags)
        try:
            _batch_call(BPF_MAP_UPDATE_BATCH, attr, detail="map fd %d, %d elements" % (fd, size))
        except BpfError as error:
            partial = _batch_done(attr, size)
            if error.errno not in _BATCH_FALLBACK_ERRNOS:
                error.elements_done = done + partial
                raise
            rest_keys = [keys[i * key_size:(i + 1) * key_size] for i in range(done + partial, count)]
            rest_values = [values[i * value_size:(i + 1) * value_size] for i in range(done + partial, count)]
            return done + partial + map_update_batch(fd, rest_keys, rest_values, elem_flags)
        done += size
    return done


def map_lookup_batch(fd, key_size, value_size, chunk=BATCH_CHUNK):
    """All elements of a map with BPF_MAP_LOOKUP_BATCH: (keys, values, count), keys and values
    packed (count * key_size and count * value_size bytes).

    Raises BpfError with errno EINVAL/ENOTSUPP/EOPNOTSUPP when the kernel or map type has no
    batch lookup (map_read_all() falls back then). The batch token of the generic
    implementation (LPM tries, arrays) is a key; hash maps use a 4-byte bucket index, so the
    token buffers get room for either.
    """
    token_size = max(key_size, 8)
    token_in = ctypes.create_string_buffer(token_size)
    token_out = ctypes.create_string_buffer(token_size)
    keys_buffer = ctypes.create_string_buffer(chunk * key_size)
    values_buffer = ctypes.create_string_buffer(chunk * value_size)
    keys, values = [], []
    total = 0
    first = True
    while True:
        attr = _attr(_ATTR_BATCH, 0 if first else ctypes.addressof(token_in), ctypes.addressof(token_out),
                     ctypes.addressof(keys_buffer), ctypes.addressof(values_buffer), chunk, fd, 0, 0)
        finished = False
        try:
            _batch_call(BPF_MAP_LOOKUP_BATCH, attr, detail="map fd %d" % fd)
        except BpfError as error:
            if error.errno != errno.ENOENT:
                raise
            finished = True  # the end of the map; count says how many this last call returned
        count = struct.unpack_from("=I", attr, _BATCH_COUNT_OFFSET)[0]
        if count:
            keys.append(keys_buffer.raw[:count * key_size])
            values.append(values_buffer.raw[:count * value_size])
            total += count
        if finished or count == 0:
            break
        ctypes.memmove(token_in, token_out, token_size)
        first = False
    return b"".join(keys), b"".join(values), total


def map_read_all(fd, key_size, value_size):
    """(keys, values, count) of every element, packed as map_lookup_batch() returns them:
    batch lookup where the kernel has it, else a get-next-key walk with one lookup each."""
    try:
        return map_lookup_batch(fd, key_size, value_size)
    except BpfError as error:
        if error.errno not in _BATCH_FALLBACK_ERRNOS:
            raise
    keys, values = [], []
    for key in map_keys(fd, key_size):
        value = map_lookup(fd, key, value_size)
        if value is not None:
            keys.append(bytes(key))
            values.append(bytes(value))
    return b"".join(keys), b"".join(values), len(keys)


# --- per-CPU maps ----------------------------------------------------------------

def _count_cpu_list(text):
    """Number of CPUs in a kernel CPU list such as "0-3,8-11" or "0"."""
    count = 0
    for part in text.strip().split(","):
        if not part:
            continue
        first, _dash, last = part.partition("-")
        count += (int(last) - int(first) + 1) if last else 1
    return count


_possible_cpus = None


def possible_cpus():
    """Number of possible CPUs: per-CPU map values hold one slot for each.

    The kernel sizes them with num_possible_cpus(), the weight of the possible
    mask, which /sys/devices/system/cpu/possible lists (can exceed online CPUs).
    """
    global _possible_cpus
    if _possible_cpus is None:
        with open("/sys/devices/system/cpu/possible") as cpu_list:
            _possible_cpus = _count_cpu_list(cpu_list.read())
    return _possible_cpus


def percpu_value_size(value_size):
    """Bytes of one CPU's slot in a per-CPU map value: rounded up to 8."""
    return (value_size + 7) & ~7


def percpu_lookup(fd, key, value_size):
    """Values of ``key`` in a per-CPU map, one bytes object (``value_size`` long)
    per possible CPU; None when the key is absent (per-CPU hash maps)."""
    slot = percpu_value_size(value_size)
    cpus = possible_cpus()
    raw = map_lookup(fd, key, slot * cpus)
    if raw is None:
        return None
    return [raw[cpu * slot:cpu * slot + value_size] for cpu in range(cpus)]


# --- programs ---------------------------------------------------------------------

def prog_test_run(fd, data, repeat=1, data_out_size=0):
    """Run a program on ``data`` with BPF_PROG_TEST_RUN (XDP, tc, socket filter...).

    Returns ``{"retval", "duration_ns" (mean per run), "data_out" (bytes or None)}``.
    ``repeat`` runs it that many times in the kernel; use big counts: a call costs
    milliseconds of setup when the program is not attached anywhere.
    """
    data_in = _writable(data, len(data), "data") if data else None
    data_out = ctypes.create_string_buffer(data_out_size) if data_out_size else None
    attr = _attr(_ATTR_TEST_RUN, fd, 0, len(data), data_out_size,
                 _address(data_in), _address(data_out), repeat, 0)
    bpf(BPF_PROG_TEST_RUN, attr, detail="prog fd %d" % fd)
    retval = struct.unpack_from("=I", attr, _TEST_RUN_RETVAL_OFFSET)[0]
    duration = struct.unpack_from("=I", attr, _TEST_RUN_DURATION_OFFSET)[0]
    out = None
    if data_out is not None:
        size_out = struct.unpack_from("=I", attr, _TEST_RUN_SIZE_OUT_OFFSET)[0]
        out = data_out.raw[:size_out]
    return {"retval": retval, "duration_ns": duration, "data_out": out}


def prog_load(prog_type, insns, log_size=65536, name=""):
    """Load a raw program (``insns``: (code, regs, off, imm) tuples) through the verifier.

    Returns ``(fd, log)``: the program's descriptor (the caller closes it) and the verifier's
    log, or ``(None, log)`` with ``error`` set when the verifier refused it. Used by the
    feature probes, which need the verifier's reason, not only the errno.
    """
    code = b"".join(_INSN.pack(*insn) for insn in insns)
    insn_buffer = ctypes.create_string_buffer(code, len(code))
    license_buffer = ctypes.create_string_buffer(b"GPL")
    log_buffer = ctypes.create_string_buffer(log_size)
    attr = _attr(_ATTR_PROG_LOAD, prog_type, len(insns), ctypes.addressof(insn_buffer),
                 ctypes.addressof(license_buffer), 1 if log_size else 0, log_size,
                 ctypes.addressof(log_buffer) if log_size else 0, 0, 0, name.encode()[:15])
    try:
        fd = bpf(BPF_PROG_LOAD, attr, detail="program type %d" % prog_type)
    except BpfError as error:
        error.verifier_log = log_buffer.value.decode("utf-8", "replace")
        raise
    return fd, log_buffer.value.decode("utf-8", "replace")


def prog_test_run_flags(fd, data, flags, repeat=1):
    """BPF_PROG_TEST_RUN with ``flags`` (BPF_F_TEST_XDP_LIVE_FRAMES...): its return value."""
    data_in = _writable(data, len(data), "data")
    attr = _attr(_ATTR_TEST_RUN_FLAGS, fd, 0, len(data), 0, _address(data_in), 0, repeat, 0,
                 0, 0, 0, 0, flags)
    bpf(BPF_PROG_TEST_RUN, attr, detail="prog fd %d, flags %#x" % (fd, flags))
    return struct.unpack_from("=I", attr, _TEST_RUN_RETVAL_OFFSET)[0]
