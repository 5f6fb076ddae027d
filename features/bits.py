"""Bit-level views of float32 words: ULP distances and significant mantissa bits."""

from __future__ import annotations

import numpy as np


def ordered_int(values: np.ndarray) -> np.ndarray:
    """Map float32 to int64 so that adjacent floats differ by 1 (ULP distance = difference)."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.int32).astype(np.int64)
    return np.where(bits < 0, -(bits & 0x7FFFFFFF), bits)


def ulp_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(ordered_int(a) - ordered_int(b))


def ulp_of(values: np.ndarray) -> np.ndarray:
    """Spacing of the float32 grid at each value (float64)."""
    v = np.abs(np.asarray(values, dtype=np.float32))
    return (np.nextafter(v, np.float32(np.inf)) - v).astype(np.float64)


def significant_bits(values: np.ndarray) -> np.ndarray:
    """Mantissa bits a float32 really uses (1..24; 0 for zero): bf16 values use <= 8, fp16 <= 11."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    mantissa = (bits & np.uint32(0x7FFFFF)) | np.uint32(0x800000)
    low = mantissa & (~mantissa + np.uint32(1))  # lowest set bit
    trailing = np.log2(low.astype(np.float64)).astype(np.int64)
    out = 24 - trailing
    return np.where((bits & np.uint32(0x7FFFFFFF)) == 0, 0, out)


def low_bit_rates(values: np.ndarray, n_bits: int = 16) -> np.ndarray:
    """Per row: share of values with each of the `n_bits` lowest mantissa bits set, shape (n, n_bits)."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    shifts = np.arange(n_bits, dtype=np.uint32)
    return ((bits[..., None] >> shifts) & np.uint32(1)).mean(axis=1)
