"""How serving engines turn logits into the logprobs they return, reproduced bit for bit.

An auditor who holds a candidate's reference *logits* compares them with an endpoint's
*logprobs* only after applying the engine's own formula, with its own float32 roundings: a
mathematically equal log-softmax computed another way differs in the last bits, and those bits
are the fingerprint.
"""

from __future__ import annotations

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
