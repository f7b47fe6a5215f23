# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Compile, verify and pin programs with BCC.

BCC comes from the distribution (`python3-bpfcc`) and is importable only from the system
Python, so the import is guarded and the module respawns itself there when needed.
BCC writes compiler and verifier diagnostics to file descriptor 2 from C code; we capture
that descriptor around the compile and load so the task fails with the real message.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import shutil
import tempfile
import traceback

from ansible_collections.bpfleet.core.plugins.module_utils import _bpf_syscall, _features

try:
    from bcc import BPF

    HAS_BCC = True
    BCC_IMPORT_ERROR = None
except ImportError:
    HAS_BCC = False
    BCC_IMPORT_ERROR = traceback.format_exc()

BCC_PACKAGE = "python3-bpfcc"
SYSTEM_PYTHON = "/usr/bin/python3"

# Keep the last part of a long verifier log: the reason for a rejection is at its end.
MAX_LOG_CHARS = 8000


class CompileError(Exception):
    def __init__(self, stage, message, log):
        self.stage = stage
        self.log = log
        super(CompileError, self).__init__("%s failed: %s" % (stage, message))


class _CapturedStderr:
    """Redirect fd 2 into a temporary file for the duration of a with-block."""

    def __enter__(self):
        self._file = tempfile.TemporaryFile(mode="w+b")
        self._saved = os.dup(2)
        os.dup2(self._file.fileno(), 2)
        return self

    def __exit__(self, *exc):
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._file.seek(0)
        text = self._file.read().decode("utf-8", "replace")
        self._file.close()
        self.text = text[-MAX_LOG_CHARS:]
        return False


def _program_type(hook):
    return BPF.XDP if hook == "xdp" else BPF.SCHED_CLS


def _compile(source, features_header):
    """BPF(text=source) with bpfleet_features.h on the include path (a private directory, so
    hosts compiling different feature sets at once never see each other's header)."""
    include_dir = tempfile.mkdtemp(prefix="bpfleet-include-")
    try:
        with open(os.path.join(include_dir, _features.FEATURES_HEADER), "w") as handle:
            handle.write(features_header)
        return BPF(text=source, cflags=["-I" + include_dir])
    finally:
        shutil.rmtree(include_dir, ignore_errors=True)


def compile_and_pin(source, programs, pin_dir, suffix, features_header=None):
    """Compile the source, load each program through the verifier, and pin it as <pin><suffix>.

    `features_header` is the text of bpfleet_features.h (_features.header()); None probes
    this host's kernel for it. The maps are BPF_TABLE_PINNED: BCC reuses the pinned ones
    (keeping counters and list entries) and creates and pins missing ones. Returns
    {pin name: pinned path}. Nothing is attached here, so a failure leaves the running
    programs untouched.
    """
    if features_header is None:
        features_header = _features.header(_features.probe()[0])
    capture = _CapturedStderr()
    with capture:
        try:
            bpf = _compile(source, features_header)
        except Exception as exc:  # BCC raises a bare Exception on compile errors
            compile_exc = exc
        else:
            compile_exc = None
    if compile_exc is not None:
        raise CompileError("compile", str(compile_exc), capture.text)

    pinned = {}
    try:
        for program in programs:
            capture = _CapturedStderr()
            with capture:
                try:
                    function = bpf.load_func(program["function"], _program_type(program["hook"]))
                except Exception as exc:
                    load_exc = exc
                else:
                    load_exc = None
            if load_exc is not None:
                raise CompileError("verifier (%s)" % program["function"], str(load_exc), capture.text)
            path = os.path.join(pin_dir, program["pin"] + suffix)
            if os.path.exists(path):
                os.unlink(path)
            try:
                _bpf_syscall.obj_pin(function.fd, path)
            except OSError as exc:
                raise CompileError("pin", "could not pin %s: %s" % (program["function"], exc), "") from exc
            pinned[program["pin"]] = path
    except Exception:
        for path in pinned.values():
            if os.path.exists(path):
                os.unlink(path)
        raise
    finally:
        bpf.cleanup()
    return pinned
