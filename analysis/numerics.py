"""CPU numerics pinned before torch loads: MKL's conditional numerical reproducibility (CNR).

torch's CPU build uses MKL, which picks kernels by the memory alignment of its operands unless
`MKL_CBWR` is set when MKL initialises. The same weights mmapped from a safetensors file and
allocated in code then give results 2e-5 apart (measured on AMD EPYC), so an image would depend on
how its weights were loaded. Importing `analysis` (the CLI, notebooks, tests) sets
`MKL_CBWR=AUTO,STRICT` unless the user set it; the value, who set it, whether torch had loaded
first, the CPU's kernel capability and the BLAS are recorded in every run's manifest, and a
resume under different ones warns, as for a changed GPU.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

#: best instruction set the CPU has, strict reproducibility (fixed alignment-independent kernels)
DEFAULT = "AUTO,STRICT"
#: benchmarks only: leave MKL_CBWR unset to measure what the pin costs
OPT_OUT = "T2I_AUDIT_NO_MKL_PIN"

_state: dict[str, Any] = {}


def pin_mkl() -> None:
    """Set MKL_CBWR before MKL initialises (once per process; a user's own value is kept)."""
    if _state:
        return
    torch_first = "torch" in sys.modules
    if OPT_OUT in os.environ and "MKL_CBWR" not in os.environ:
        set_by = "nobody (benchmark opt-out)"
    elif "MKL_CBWR" in os.environ:
        set_by = "user"
    else:
        os.environ["MKL_CBWR"] = DEFAULT
        set_by = "t2i-audit"
    _state.update(set_by=set_by, before_torch=not torch_first)
    if os.environ.get("MKL_CBWR", "").strip().upper().startswith("COMPATIBLE"):
        warnings.warn(
            "MKL_CBWR=COMPATIBLE was measured to break fixed-shape batch invariance (an image "
            "then depends on what shares its batch); unset it or use AUTO,STRICT",
            stacklevel=3,
        )
    if torch_first and set_by == "t2i-audit":
        warnings.warn(
            "torch was imported before analysis: MKL_CBWR was set late and may not take effect; "
            "import analysis first (or export MKL_CBWR=AUTO,STRICT) for bit-identical CPU results",
            stacklevel=3,
        )


def numerics_info() -> dict[str, Any]:
    """What decides the last bits of a CPU result; {} before torch has loaded (nothing ran)."""
    torch = sys.modules.get("torch")
    info: dict[str, Any] = {
        "mkl_cbwr": os.environ.get("MKL_CBWR"),
        "mkl_cbwr_set_by": _state.get("set_by"),
        "mkl_cbwr_before_torch": _state.get("before_torch"),
    }
    if torch is None:
        return info
    config = torch.__config__.show()
    blas = next(
        (p.split("=", 1)[1] for p in config.replace(",", " ").split() if "BLAS_INFO=" in p), None
    )
    info.update(
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
        blas=blas,
        mkl=bool(torch.backends.mkl.is_available()),
    )
    return info


#: the keys whose change on a resume may move the last bits of a CPU image
CHANGES_BITS = ("mkl_cbwr", "cpu_capability", "blas")


def numerics_changes(before: dict[str, Any] | None, now: dict[str, Any]) -> list[str]:
    """'key (old -> new)' for every bit-relevant setting that differs from the run's start."""
    if not before:
        return []
    return [
        f"{k} ({before.get(k)} -> {now.get(k)})"
        for k in CHANGES_BITS
        if k in before and k in now and before.get(k) != now.get(k)
    ]
