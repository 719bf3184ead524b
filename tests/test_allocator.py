"""glibc's malloc is told to keep freed memory, unless ALIGNER_MALLOPT=0 says not to."""

from __future__ import annotations

import ctypes
import os
import sys

import pytest

from aligner_lightning import allocator

glibc = sys.platform.startswith("linux") and bool(os.confstr("CS_GNU_LIBC_VERSION"))


class _MallInfo2(ctypes.Structure):  # <malloc.h>'s struct mallinfo2 (glibc 2.33+)
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]


@pytest.mark.skipif(not glibc, reason="glibc only")
def test_mallopt_applies_on_glibc(monkeypatch):
    monkeypatch.delenv(allocator.ENV, raising=False)
    assert allocator.keep_freed_memory()  # both mallopt calls returned 1
    libc = allocator._glibc()
    if not hasattr(libc, "mallinfo2"):
        return
    # Its effect: 16 MiB, mmap-ed under glibc's defaults (128 KiB threshold), now comes from the heap.
    libc.mallinfo2.restype = _MallInfo2
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    mapped = libc.mallinfo2().hblkhd
    block = libc.malloc(16 << 20)
    try:
        assert libc.mallinfo2().hblkhd == mapped
    finally:
        libc.free(block)


def test_env_var_disables_it(monkeypatch):
    monkeypatch.setenv(allocator.ENV, "0")
    assert not allocator.keep_freed_memory()


def test_no_op_off_linux(monkeypatch):
    monkeypatch.delenv(allocator.ENV, raising=False)
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    assert not allocator.keep_freed_memory()
