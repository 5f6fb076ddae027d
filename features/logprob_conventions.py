"""How serving engines turn logits into the logprobs they return, reproduced bit for bit.

An auditor who holds a candidate's reference *logits* compares them with an endpoint's
*logprobs* only after applying the engine's own formula, with its own float32 roundings: a
mathematically equal log-softmax computed another way differs in the last bits, and those bits
are the fingerprint.
"""

from __future__ import annotations

import ctypes
import ctypes.util

import numpy as np


def llama_cpp_python_logprobs(logits: np.ndarray) -> np.ndarray:
    """Logprobs exactly as llama-cpp-python's server computes them (rows = probes, float32).

    Source: `Llama.logits_to_logprobs` in llama_cpp/llama.py (llama-cpp-python 0.3.36), which
    `_create_completion` applies to the float32 logits llama.cpp returned, all in float32:

        m = max(logits) (set to 0 where not finite);  s = float32(logits - m)
        logprobs = s - log(sum(exp(s)))                 # numpy's exp, pairwise sum, log

    The server then sends each value as a JSON number (the float32 widened exactly to float64),
    so float32(json value) is this function's value bit for bit — measured against a real
    `python -m llama_cpp.server` (tests/test_llama_cpp.py), with the same numpy: numpy picks its
    float32 exp/log kernels by CPU (SIMD dispatch), so another machine's numpy may differ in the
    last bit.
    """
    logits = np.asarray(logits, dtype=np.float32)
    maxima = np.amax(logits, axis=-1, keepdims=True)
    maxima[~np.isfinite(maxima)] = 0
    shifted = np.subtract(logits, maxima, dtype=np.single)
    with np.errstate(divide="ignore"):  # a row of -inf gives log(0), as in the original
        log_norm = np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))
    return (shifted - log_norm).astype(np.float32, copy=False)


def llama_server_logprobs(logits: np.ndarray, n_top: int) -> tuple[np.ndarray, np.ndarray]:
    """Logprobs exactly as llama.cpp's C++ `llama-server` sends them when asked for `n_top` of them.

    Source: `get_token_probabilities` (tools/server/server-common.cpp) and
    `completion_token_output::logarithm` (server-task.cpp) of the llama.cpp tree that the pinned
    llama-cpp-python 0.3.36 vendors:

        std::partial_sort(cur, cur + n_top, end, by logit, larger first)
        m = cur[0].logit;  p_i = expf(logit_i - m);  cum += p_i      (float32, in the array's order)
        p_i /= cum;  logprob_i = p_i == 0 ? FLT_LOWEST : logf(p_i)

    The sum runs in the order `partial_sort` leaves the whole array in, so the value bits depend on
    `n_top` and on libstdc++'s heap-select: both are reproduced here, with glibc's own `expf` and
    `logf` (numpy's float32 kernels are others).  Measured bit for bit against a real `llama-server`
    (tests/test_llama_server.py).  Returns (ids (n, n_top), logprobs (n, V)): the top ids in the
    server's order, and every token's logprob with the same normaliser.
    """
    logits = np.atleast_2d(np.asarray(logits, dtype=np.float32))
    n, width = logits.shape
    n_top = min(max(int(n_top), 0), width)
    ids = np.empty((n, n_top), dtype=np.int32)
    logprobs = np.empty((n, width), dtype=np.float32)
    for row in range(n):
        order = _partial_sort_order(logits[row], n_top)
        ordered = logits[row][order]
        peak = ordered[0] if n_top else ordered.max()
        shifted = np.subtract(ordered, peak, dtype=np.float32)
        p = np.fromiter((_LIBM.expf(x) for x in shifted.tolist()), dtype=np.float32, count=width)
        total = np.cumsum(p, dtype=np.float32)[-1]  # a float32 running sum, element by element
        probs = np.empty(width, dtype=np.float32)
        probs[order] = np.divide(p, total, dtype=np.float32)
        logprobs[row] = np.fromiter(
            (_LIBM.logf(x) if x != 0 else _FLT_LOWEST for x in probs.tolist()), dtype=np.float32, count=width
        )
        ids[row] = order[:n_top]
    return ids, logprobs


_FLT_LOWEST = float(np.finfo(np.float32).min)


class _GlibcMath:
    """glibc's float32 `expf` and `logf`, the functions llama-server's C++ calls."""

    def __init__(self) -> None:
        libm = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
        for name in ("expf", "logf"):
            fn = getattr(libm, name)
            fn.restype, fn.argtypes = ctypes.c_float, [ctypes.c_float]
        self.expf, self.logf = libm.expf, libm.logf


_LIBM = _GlibcMath()


def _partial_sort_order(values: np.ndarray, n_top: int) -> np.ndarray:
    """The index order libstdc++'s `std::partial_sort(first, first + n_top, last, a > b)` leaves an array
    in: `__heap_select` (a heap of the first n_top, each later element larger than its top swapped in
    by `__pop_heap`), then `__sort_heap` of the first n_top.  The helpers follow stl_heap.h."""
    v = values.tolist()
    a = list(range(len(v)))

    def push_heap(hole: int, top: int, value: int) -> None:
        parent = (hole - 1) // 2
        while hole > top and v[a[parent]] > v[value]:
            a[hole] = a[parent]
            hole = parent
            parent = (hole - 1) // 2
        a[hole] = value

    def adjust_heap(hole: int, length: int, value: int) -> None:
        top = second = hole
        while second < (length - 1) // 2:
            second = 2 * (second + 1)
            if v[a[second]] > v[a[second - 1]]:
                second -= 1
            a[hole] = a[second]
            hole = second
        if length % 2 == 0 and second == (length - 2) // 2:
            second = 2 * (second + 1)
            a[hole] = a[second - 1]
            hole = second - 1
        push_heap(hole, top, value)

    def pop_heap(last: int, result: int) -> None:
        value = a[result]
        a[result] = a[0]
        adjust_heap(0, last, value)

    if n_top >= 2:  # __make_heap
        parent = (n_top - 2) // 2
        while True:
            adjust_heap(parent, n_top, a[parent])
            if parent == 0:
                break
            parent -= 1
    if n_top >= 1:
        for i in range(n_top, len(a)):
            if v[a[i]] > v[a[0]]:
                pop_heap(n_top, i)
    for last in range(n_top - 1, 0, -1):  # __sort_heap
        pop_heap(last, last)
    return np.asarray(a, dtype=np.int64)
