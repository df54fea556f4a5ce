# Type stubs for the compiled core: what editors and mypy see of uringloop._core.
import asyncio
from typing import Callable, FrozenSet, NamedTuple, Optional


class RingStats(NamedTuple):
    capacity: int
    cq_capacity: int
    pending: int
    resizes_up: int
    resizes_down: int
    submitted: int
    completed: int
    enters: int
    iterations: int
    migrations: int
    resize_method: str
    resize_time: float
    shrinks_deferred: int


class Support(NamedTuple):
    ok: bool
    reason: str


class IoUringUnavailable(RuntimeError):
    errno: int
    cause: str
    def __init__(self, message: str, errno: int, cause: str) -> None: ...


def check_support() -> Support: ...


class KernelFeatures(NamedTuple):
    release: str
    available: bool
    error: Optional[str]
    setup_errno: int
    setup_features: int
    opcodes: FrozenSet[str]
    single_issuer: bool
    defer_taskrun: bool
    no_sqarray: bool
    ext_arg: bool
    nodrop: bool
    min_timeout: bool
    pbuf_ring: bool
    pbuf_status: bool
    recv_multishot: bool
    accept_multishot: bool
    read_multishot: bool
    resize_rings: bool


def kernel_features() -> KernelFeatures: ...
def missing_kernel_features(features: Optional[KernelFeatures] = ...) -> list: ...
def unsupported_kernel_error(
    features: Optional[KernelFeatures] = ...) -> Optional[IoUringUnavailable]: ...


class CoreLoop(asyncio.BaseEventLoop):
    def ring_stats(self) -> RingStats: ...
    def _set_iteration_observer(self, observer: Optional[Callable[[RingStats], object]]) -> None: ...


class NativeLoop(CoreLoop): ...
