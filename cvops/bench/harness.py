"""The one benchmark harness: cvops and its reference timed alternately in the same process,
in rounds; each round is a ``torch.utils.benchmark`` blocked measurement (back-to-back calls
in blocks long enough that the timer and the wake-up of idle threads do not dominate a
sub-millisecond op, the accelerator synchronised around each block), after warm-up calls.
The result is the median per-call time over all blocks of all rounds.

Ops add cases with :func:`register`; ``python -m cvops.bench`` runs them.
"""

import ctypes
import ctypes.util
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable, List, Optional, Tuple

try:
    import resource
except ImportError:  # not on Windows
    resource = None

import torch
from torch.utils.benchmark import Timer

# make(device) -> (cvops_fn, reference_fn); each fn runs one iteration.
MakeFns = Callable[[str], Tuple[Callable[[], object], Callable[[], object]]]


@dataclass
class BenchCase:
    op: str
    case: str
    dtype: str
    make: MakeFns
    reference: str = "torchvision"
    devices: Tuple[str, ...] = ("cpu", "cuda")
    # Bytes one cvops call must read and write at the least (memory-bound ops: the losses),
    # for a GB/s figure against the device's copy bandwidth; None where that means nothing.
    bytes: Optional[int] = None


@dataclass
class Result:
    op: str
    case: str
    device: str
    dtype: str
    reference: str
    cvops_ms: float
    reference_ms: float
    # CPU: minor page faults per timed call (FaultCounter), None elsewhere
    cvops_faults: Optional[float] = None
    reference_faults: Optional[float] = None
    bytes: Optional[int] = None  # BenchCase.bytes

    @property
    def speedup(self) -> float:
        return self.reference_ms / self.cvops_ms

    def as_dict(self):
        d = asdict(self)
        d["speedup"] = round(self.speedup, 3)
        return d


_CASES: List[BenchCase] = []


def register(case: BenchCase) -> BenchCase:
    _CASES.append(case)
    return case


def registered_cases() -> List[BenchCase]:
    return list(_CASES)


def fix_malloc_thresholds() -> str:
    """Fixes glibc's malloc thresholds for this process (no-op elsewhere); returns what it did.

    By default glibc moves its mmap threshold with the sizes freed and gives the top of the
    heap back to the OS. A process that allocates and frees buffers of a few to 30 MB then
    drifts between reusing heap memory and page-faulting fresh pages on every call: the same
    cvops fwd+bwd measured 1.5 ms in one run and 5 ms in the next, and oneDNN's forward (whose
    NCHW <-> blocked reorders allocate such buffers) 0.9 ms with the thresholds fixed against
    1.5 ms without (2026-11-29, MobileNetV2's [8,32,112,112] layer). A fixed 32 MiB mmap
    threshold and a 1 GiB trim threshold keep those buffers on the heap, as jemalloc or
    tcmalloc would. Opt-in (--fixed-malloc): the issue targets are set against the defaults.
    """
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return "glibc defaults (no C library found)"
    try:
        mallopt = ctypes.CDLL(libc_name).mallopt
    except (OSError, AttributeError):
        return "defaults (no mallopt: not glibc)"
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    ok = mallopt(m_mmap_threshold, 32 << 20) == 1 and mallopt(m_trim_threshold, 1 << 30) == 1
    if not ok:
        return "glibc defaults (mallopt refused)"
    return "fixed: glibc mmap threshold 32 MiB, trim threshold 1 GiB"


def _sync(device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_fn(fn, device: str, warmup: int = 1, min_time: float = 0.05) -> List[float]:
    """Per-call wall times in ms, one per block, of ``fn`` measured for at least ``min_time``
    seconds after ``warmup`` calls, at the current torch thread count."""
    for _ in range(warmup):
        fn()
    _sync(device)
    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return [t * 1e3 for t in timer.blocked_autorange(min_run_time=min_time).times]


def _minor_faults() -> Optional[int]:
    """Minor page faults of this process so far (all threads), None where not counted."""
    return None if resource is None else resource.getrusage(resource.RUSAGE_SELF).ru_minflt


class FaultCounter:
    """Minor page faults per call over timed calls. A large op's first write to freshly mapped
    memory faults once per 4 KiB page, ~1.3 us each on this project's VM: a 12.8 MB output
    that faults costs more than the kernel. The calls are estimated as elapsed time over the
    median call time, so the counting adds nothing to the calls themselves."""

    def __init__(self):
        self.faults = 0
        self.seconds = 0.0

    def time(self, fn, *args, **kwargs) -> List[float]:
        """time_fn(fn, *args, **kwargs), its faults and wall time added to the counts."""
        before, start = _minor_faults(), time.perf_counter()
        times = time_fn(fn, *args, **kwargs)
        self.seconds += time.perf_counter() - start
        if before is not None:
            self.faults += _minor_faults() - before
        return times

    def per_call(self, median_ms: float) -> Optional[float]:
        if resource is None or median_ms <= 0:
            return None
        return self.faults / max(1.0, self.seconds / (median_ms * 1e-3))


def backward_step(fn, x, args, deterministic: bool = False):
    """A callable running one ``fn(x, *args).sum().backward()`` with
    ``torch.use_deterministic_algorithms(deterministic)`` in force (restored afterwards)."""

    def run():
        prev = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(deterministic)
        try:
            fn(x, *args).sum().backward()
        finally:
            torch.use_deterministic_algorithms(prev)
        x.grad = None

    return run


def run_case(
    case: BenchCase, device: str, warmup: int = 1, rounds: int = 3, min_time: float = 0.05
) -> Result:
    ours, ref = case.make(device)
    # Alternate the two in rounds so drift (thermal, other load) hits both alike.
    ours_t, ref_t = [], []
    # (which side page-faults explains most of the run-to-run spread of the large CPU cases)
    ours_f, ref_f = FaultCounter(), FaultCounter()
    for r in range(rounds):
        ours_t += ours_f.time(ours, device, warmup if r == 0 else 0, min_time)
        ref_t += ref_f.time(ref, device, warmup if r == 0 else 0, min_time)
    ours_ms, ref_ms = statistics.median(ours_t), statistics.median(ref_t)
    cpu = device == "cpu"
    return Result(
        case.op,
        case.case,
        device,
        case.dtype,
        case.reference,
        ours_ms,
        ref_ms,
        ours_f.per_call(ours_ms) if cpu else None,
        ref_f.per_call(ref_ms) if cpu else None,
        case.bytes,
    )
