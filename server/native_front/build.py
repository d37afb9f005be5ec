"""front.cc compiled once per source into a shared library in the user's cache, and loaded with ctypes.

It needs a C++ compiler and gRPC's C++ library, which no wheel carries: on Debian and Ubuntu,
`apt-get install g++ pkg-config libgrpc++-dev`. Compiling takes about 5 s; the library is named by a hash of its
source and the flags, so an upgrade of rnnserve compiles it again and two servers never load a stale one."""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("front.cc")
HEADERS = (Path(__file__).with_name("kserve_wire.h"),)
INSTALL_HINT = "on Debian or Ubuntu: apt-get install g++ pkg-config libgrpc++-dev"


class NativeUnavailable(RuntimeError):
    """The native front end cannot be built here; the message says what to install."""


class EventView(ctypes.Structure):
    """One event as rf_next hands it: its data points into the front end's memory until the next rf_next."""

    _fields_ = [("call", ctypes.c_uint64), ("kind", ctypes.c_int32), ("unused", ctypes.c_int32),
                ("data", ctypes.c_void_p), ("size", ctypes.c_uint64), ("ticket", ctypes.c_uint64)]


def cache_dir() -> Path:
    root = os.environ.get("RNNSERVE_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "rnnserve")
    return Path(root)


def _flags() -> list[str]:
    if shutil.which("pkg-config") is None or shutil.which(os.environ.get("CXX", "g++")) is None:
        raise NativeUnavailable(f"the native front end is compiled on first use and needs a C++ compiler and pkg-config ({INSTALL_HINT})")
    found = subprocess.run(["pkg-config", "--cflags", "--libs", "grpc++"], capture_output=True, text=True)
    if found.returncode != 0:
        raise NativeUnavailable(f"the native front end needs gRPC's C++ library, which pkg-config does not find ({INSTALL_HINT})")
    return found.stdout.split()


@functools.cache
def library() -> ctypes.PyDLL:
    """The compiled front end, built now if this source has not been built before."""
    compiler, flags = os.environ.get("CXX", "g++"), _flags()
    command = [compiler, "-O2", "-std=c++17", "-shared", "-fPIC", str(SOURCE), *flags]
    sources = SOURCE.read_bytes() + b"".join(header.read_bytes() for header in HEADERS)
    key = hashlib.sha256(sources + " ".join(command).encode()).hexdigest()[:16]
    path = cache_dir() / f"librnnserve_front-{key}.so"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
            built = Path(scratch) / path.name
            result = subprocess.run([*command[:-len(flags)], "-o", str(built), *flags], capture_output=True, text=True)
            if result.returncode != 0:
                raise NativeUnavailable(f"compiling {SOURCE.name} failed ({INSTALL_HINT}):\n{result.stderr[-2000:]}")
            os.replace(built, path)  # whole or not at all, however many servers build it at once
    # PyDLL: its calls keep the GIL. Each is a few µs of queueing; releasing and taking back the GIL around it let
    # the engine thread in every time, and the event loop then waited for it (a fifth of its time, 64 streams)
    return _declared(ctypes.PyDLL(str(path)))


@functools.cache
def unavailable() -> str | None:
    """Why the native front end cannot be built here (None: it can, and is built now)."""
    try:
        library()
    except NativeUnavailable as err:
        return str(err)
    return None


def _declared(lib: ctypes.PyDLL) -> ctypes.PyDLL:
    void_p, u64 = ctypes.c_void_p, ctypes.c_uint64
    lib.rf_start.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_int), ctypes.c_int,
                             ctypes.POINTER(ctypes.c_int), ctypes.c_char_p, ctypes.c_size_t]
    lib.rf_start.restype = void_p
    lib.rf_event_fd.argtypes = [void_p]
    lib.rf_event_fd.restype = ctypes.c_int
    size_p = ctypes.POINTER(ctypes.c_size_t)
    lib.rf_next.argtypes = [void_p, ctypes.POINTER(EventView), ctypes.c_int, void_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t,
                            ctypes.POINTER(ctypes.c_int), size_p]
    lib.rf_next.restype = ctypes.c_int
    lib.rf_write.argtypes = [void_p, u64, ctypes.c_char_p, ctypes.c_size_t]
    lib.rf_write.restype = None
    lib.rf_finish.argtypes = [void_p, u64, ctypes.c_int, ctypes.c_char_p]
    lib.rf_finish.restype = None
    lib.rf_answer.argtypes = [void_p, u64, u64, ctypes.c_char_p, ctypes.c_size_t]
    lib.rf_answer.restype = None
    lib.rf_answer_error.argtypes = [void_p, u64, u64, ctypes.c_char_p]
    lib.rf_answer_error.restype = None
    lib.rf_defer.argtypes = [void_p, u64, u64]
    lib.rf_defer.restype = None
    lib.rf_route.argtypes = [void_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]
    lib.rf_route.restype = ctypes.c_int
    lib.rf_route_answers.argtypes = [void_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int,
                                     ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_int)]
    lib.rf_route_answers.restype = None
    lib.rf_answer_steps.argtypes = [void_p, ctypes.c_int, ctypes.c_int, ctypes.POINTER(u64), ctypes.POINTER(u64),
                                    ctypes.POINTER(ctypes.c_int64), ctypes.c_int, ctypes.POINTER(void_p)]
    lib.rf_answer_steps.restype = None
    lib.rf_plain.argtypes = [void_p, ctypes.c_int]
    lib.rf_plain.restype = None
    lib.rf_hold.argtypes = [void_p, ctypes.c_int]
    lib.rf_hold.restype = ctypes.c_int
    lib.rf_read_request.argtypes = [ctypes.c_char_p, ctypes.c_size_t, void_p, ctypes.c_char_p, size_p, ctypes.c_char_p, size_p]
    lib.rf_read_request.restype = ctypes.c_int
    lib.rf_stop.argtypes = [void_p, ctypes.c_char_p]
    lib.rf_stop.restype = None
    return lib
