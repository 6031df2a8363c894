"""Pin the CPU code paths that decide a stage's bits, so `dvc.lock` reproduces on another machine.

Same params and data give the same bytes on one machine, but not across machines: the numeric
libraries pick their kernels from the CPU they find (AVX-512 or AVX2, Intel or AMD) and split
reductions by the number of threads, and each choice rounds differently. One last-bit difference
is enough: the zoo's 16 epochs of SGD turn it into different networks, and every hash downstream
changes. Each stage process calls `pin()` first, before torch or numpy is imported (they read
these settings when they load), and it overrides the user's shell for the pinned variables:

==========================  ============  ===================================================================
variable                    value         why
==========================  ============  ===================================================================
OMP_NUM_THREADS             2             ATen splits reductions and matrix work per thread: the thread
MKL_NUM_THREADS             2             count is part of the result, so it is fixed, not the core count
ATEN_CPU_CAPABILITY         avx2          ATen's own kernels (sums, softmax, elementwise): AVX-512 adds 16
                                          lanes at a time, AVX2 8; the default picks the widest the CPU has
NPY_DISABLE_CPU_FEATURES    (AVX-512)     numpy's exp/log loops for AVX-512 round differently from the AVX2
                                          ones (1 ulp): the zoo's per-run learning rates are `np.exp` of a
                                          draw, and 25 of the 512 default ones differ between the two loops
MKL_CBWR                    COMPATIBLE    MKL (matrix products) picks its code branch by CPU model and vendor;
                                          COMPATIBLE is its one branch that is the same on every x86-64
                                          CPU, Intel or not; STRICT makes it independent of the thread count
ONEDNN_MAX_CPU_ISA          AVX2          oneDNN (convolutions) JIT-compiles for the widest ISA found
==========================  ============  ===================================================================

`WEIGHTVAE_PIN_CPU=0` in the environment turns all of this off: the libraries then use the
machine's full width and every core (faster on big machines), and outputs are reproducible on
that machine only, not against the committed `dvc.lock`. README, "Reproducibility and CI".
"""

from __future__ import annotations

import os
import sys
import warnings

#: intra-op threads of every stage process, whatever the machine's core count
THREADS = 2

#: the environment every stage runs under (see the table above)
PINNED: dict[str, str] = {
    "OMP_NUM_THREADS": str(THREADS),
    "MKL_NUM_THREADS": str(THREADS),
    "ATEN_CPU_CAPABILITY": "avx2",
    # numpy >= 2.4 names its AVX-512 targets X86_V4, AVX512_ICL, AVX512_SPR; older numpy AVX512F, AVX512_SKX, ...
    # (names a numpy does not dispatch are ignored)
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR AVX512F AVX512CD AVX512_KNL AVX512_KNM AVX512_SKX "
                                "AVX512_CLX AVX512_CNL",
    "MKL_CBWR": "COMPATIBLE,STRICT",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
}

OPT_OUT = "WEIGHTVAE_PIN_CPU"


def enabled() -> bool:
    return os.environ.get(OPT_OUT, "1").strip().lower() not in ("0", "false", "no", "off")


def pin() -> dict[str, str]:
    """Set the pinned environment (unless `WEIGHTVAE_PIN_CPU=0`); returns what was set.

    Call it before anything imports torch or numpy. If one of them is already loaded, the settings
    it has read by then cannot change any more: a warning says so.
    """
    if not enabled():
        return {}
    os.environ.update(PINNED)
    loaded = [m for m in ("torch", "numpy") if m in sys.modules]
    if loaded:
        warnings.warn(f"weightvae.determinism.pin() ran after {' and '.join(loaded)} was imported; outputs may not "
                      "match dvc.lock (call it first, as stages/*.py do)", RuntimeWarning, stacklevel=2)
    return dict(PINNED)
