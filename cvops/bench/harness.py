"""The one benchmark harness: median wall time after warm-up, CUDA synchronised, cvops and
its reference timed alternately in the same process.

Ops add cases with :func:`register`; ``python -m cvops.bench`` runs them.
"""

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable, List, Tuple

import torch

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


@dataclass
class Result:
    op: str
    case: str
    device: str
    dtype: str
    reference: str
    cvops_ms: float
    reference_ms: float

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


def _sync(device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_fn(fn, device: str, warmup: int = 2, repeats: int = 7) -> List[float]:
    """Wall times in ms of ``repeats`` calls of ``fn`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return times


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


def run_case(case: BenchCase, device: str, warmup: int, repeats: int) -> Result:
    ours, ref = case.make(device)
    # Alternate the two in rounds so drift (thermal, other load) hits both alike.
    ours_t, ref_t = [], []
    for _ in range(2):
        ours_t += time_fn(ours, device, warmup, max(1, repeats // 2))
        ref_t += time_fn(ref, device, warmup, max(1, repeats // 2))
    return Result(
        case.op,
        case.case,
        device,
        case.dtype,
        case.reference,
        statistics.median(ours_t),
        statistics.median(ref_t),
    )
