"""Recognising exhausted memory, however it is reported.

Python raises :class:`MemoryError`; torch's allocators raise a
``RuntimeError`` instead (``DefaultCPUAllocator: not enough memory``, ``CUDA
out of memory``; ``torch.OutOfMemoryError`` is one).  The command line and
``fit-batch`` report all of them as one "out of memory" line.
"""

from __future__ import annotations

__all__ = ["is_out_of_memory"]

# Lower-case phrases of the allocator messages torch raises as RuntimeError.
_ALLOCATOR_PHRASES = ("defaultcpuallocator", "not enough memory", "out of memory", "can't allocate memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """True for a :class:`MemoryError` or an allocator failure torch raised as ``RuntimeError``.

    Examples
    --------
    >>> is_out_of_memory(RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 8 bytes."))
    True
    >>> is_out_of_memory(RuntimeError("shape mismatch"))
    False
    """
    if isinstance(exc, MemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(p in str(exc).lower() for p in _ALLOCATOR_PHRASES)
