# -*- coding: utf-8 -*-
# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Confined writes: files opened only beneath an allowed directory, never through a symlink.

A policy names its log file (`log.sink.file`), and the agent that appends to it runs as
root, writing lines whose HTTP header values come from the network. So a sink path is
checked twice, with the same function: on the controller when the policy is validated
(`check_path`, a path-bearing error) and on the host before every open (`open_beneath`).

- The path must be absolute, made of plain components (no `..`, no `.`, no empty component,
  no control characters) and lie strictly beneath one of the allowed directories (default
  /var/log/bpfleet; the host role's `bpfleet_host_agent_sink_dirs`).
- On the host, the allowed directory is opened once (it is configured by the administrator,
  not by a policy), then every component below it is opened relative to the previous
  directory's fd with O_NOFOLLOW: a symlink planted anywhere below the allowed directory is
  refused (ELOOP / ENOTDIR) instead of followed. The final file must be a regular file with
  one link (a hard link to /etc/shadow planted in the log directory is refused too).
- New files are created 0640, new directories 0750, whatever the umask.

Standard library only, Python 3.9+: the agent imports a copy of this file placed next to it.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import os
import stat

DEFAULT_SINK_DIRS = ("/var/log/bpfleet",)
FILE_MODE = 0o640
DIR_MODE = 0o750


class UnsafePath(OSError):
    """A path refused before anything was opened or written (str() is the whole message)."""


def _clean_dir(directory):
    if not isinstance(directory, str) or not directory.startswith("/"):
        raise ValueError("allowed directory must be an absolute path, got %r" % (directory,))
    parts = [part for part in directory.split("/") if part]
    if any(part in (".", "..") for part in parts):
        raise ValueError("allowed directory must not contain '.' or '..', got %r" % (directory,))
    return "/" + "/".join(parts)


def normalize_dirs(dirs):
    """The allowed directories as clean absolute paths (default DEFAULT_SINK_DIRS)."""
    if not dirs:
        dirs = DEFAULT_SINK_DIRS
    if isinstance(dirs, str):
        dirs = [dirs]
    return tuple(_clean_dir(directory) for directory in dirs)


def describe_dirs(dirs):
    return ", ".join(directory + "/" for directory in normalize_dirs(dirs))


def check_path(path, allowed_dirs=None):
    """(allowed directory, [components below it]) for `path`, or raise UnsafePath.

    Pure string checks: the same answer on the controller and on the host.
    """
    dirs = normalize_dirs(allowed_dirs)
    if not isinstance(path, str):
        raise UnsafePath("must be an absolute file path, got %r" % (path,))
    if not path.startswith("/") or path.endswith("/"):
        raise UnsafePath("must be an absolute file path, got %r" % (path,))
    if any(ord(char) < 32 or ord(char) == 127 for char in path):
        raise UnsafePath("must not contain control characters, got %r" % (path,))
    parts = path.split("/")[1:]
    if any(part == ".." for part in parts):
        raise UnsafePath("must not contain '..' components, got %r" % (path,))
    if any(part in ("", ".") for part in parts):
        raise UnsafePath("must not contain '.' or empty components, got %r" % (path,))
    for directory in dirs:
        prefix = [part for part in directory.split("/") if part]
        if len(parts) > len(prefix) and parts[:len(prefix)] == prefix:
            return directory, parts[len(prefix):]
    raise UnsafePath("must be a file under %s (the directories the host role allows, "
                     "bpfleet_host_agent_sink_dirs), got %r" % (describe_dirs(dirs), path))


def _open_dir(name, dir_fd, create):
    """Open one directory component below dir_fd without following a symlink."""
    if create:
        try:
            os.mkdir(name, DIR_MODE, dir_fd=dir_fd)
        except FileExistsError:
            pass
    try:
        return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafePath("%s is a symlink or not a directory: refused (files are opened only "
                             "beneath the allowed directory, never through a link)" % name) from None
        raise


def open_root(root, create=True):
    """An fd of an allowed directory (trusted: set by the administrator, not by a policy)."""
    if create:
        try:
            os.makedirs(root, DIR_MODE)
        except FileExistsError:
            pass
    return os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def open_parent(root, parts, create=True):
    """An fd of the directory root/parts[0]/.../parts[-2], each step without following links."""
    fd = open_root(root, create)
    try:
        for index, part in enumerate(parts[:-1]):
            try:
                next_fd = _open_dir(part, fd, create)
            except UnsafePath as exc:
                raise UnsafePath("%s/%s: %s" % (root, "/".join(parts[:index + 1]), exc)) from None
            os.close(fd)
            fd = next_fd
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_at(dir_fd, name, flags, mode=FILE_MODE, display=None):
    """Open `name` in dir_fd without following a symlink; a regular file with one link only.

    New files get `mode` exactly (fchmod), whatever the umask.
    """
    display = display or name
    created = False
    # O_TRUNC only after the checks: a hard link must not be emptied before it is refused.
    truncate = bool(flags & os.O_TRUNC)
    flags &= ~os.O_TRUNC
    base = flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
    if flags & os.O_CREAT:
        try:
            fd = os.open(name, (base | os.O_EXCL), mode, dir_fd=dir_fd)
            created = True
        except FileExistsError:
            fd = None
        if fd is None:
            fd = _open_existing(name, base & ~os.O_CREAT, mode, dir_fd, display)
    else:
        fd = _open_existing(name, base, mode, dir_fd, display)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafePath("%s is not a regular file: refused" % display)
        if info.st_nlink != 1:
            raise UnsafePath("%s has %d hard links: refused (it may be another file's second name)"
                             % (display, info.st_nlink))
        if created:
            os.fchmod(fd, mode)
        elif truncate:
            os.ftruncate(fd, 0)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_existing(name, flags, mode, dir_fd, display):
    try:
        return os.open(name, flags, mode, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePath("%s is a symlink: refused (never followed)" % display) from None
        raise


def open_beneath(path, allowed_dirs, flags, mode=FILE_MODE):
    """Check `path` (check_path), then open it without following any link below the allowed
    directory; returns (fd, parent directory fd). The caller closes both."""
    root, parts = check_path(path, allowed_dirs)
    dir_fd = open_parent(root, parts, create=bool(flags & os.O_CREAT))
    try:
        fd = open_at(dir_fd, parts[-1], flags, mode, display=path)
    except BaseException:
        os.close(dir_fd)
        raise
    return fd, dir_fd


def write_atomic_at(dir_fd, name, data, mode=FILE_MODE, sync=False):
    """Write `data` (bytes) to dir_fd/name through a temporary file and a rename: a reader never
    sees half a file, and a symlink planted at the temporary or final name is never followed
    (O_EXCL|O_NOFOLLOW creates a fresh file; rename replaces a link, it does not write through)."""
    temporary = ".%s.tmp.%d" % (name, os.getpid())
    try:
        os.unlink(temporary, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode,
                 dir_fd=dir_fd)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(temporary, dir_fd=dir_fd)
        raise
    os.close(fd)
    os.replace(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def write_atomic_in(directory, relative, data, mode=FILE_MODE, create=True, sync=False):
    """write_atomic_at for directory/relative (relative: 'name' or 'sub/name'; `directory` is
    trusted, nothing below it is followed through a link)."""
    parts = relative.split("/")
    dir_fd = open_parent(directory, parts, create=create)
    try:
        write_atomic_at(dir_fd, parts[-1], data, mode, sync)
    finally:
        os.close(dir_fd)


def open_in(directory, relative, flags, mode=FILE_MODE):
    """Open directory/relative (trusted directory, nothing below it followed); returns an fd."""
    parts = relative.split("/")
    dir_fd = open_parent(directory, parts, create=bool(flags & os.O_CREAT))
    try:
        return open_at(dir_fd, parts[-1], flags, mode, display=os.path.join(directory, relative))
    finally:
        os.close(dir_fd)


AGENT_CONFIG = "/etc/bpfleet/agent.json"


def host_sink_dirs(config_path=AGENT_CONFIG):
    """The allowed log directories the host role wrote into the agent's config (sink_dirs),
    else the default; a damaged config falls back to the default, which is the strictest."""
    import json
    try:
        with open(config_path, "rb") as handle:
            config = json.loads(handle.read().decode("utf-8"))
        return normalize_dirs(config.get("sink_dirs") if isinstance(config, dict) else None)
    except (OSError, ValueError, AttributeError):
        return normalize_dirs(None)
