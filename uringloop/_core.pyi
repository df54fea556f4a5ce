# Type stubs for the compiled core: what editors and mypy see of uringloop._core.
import asyncio
from typing import Callable, NamedTuple, Optional


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


class Support(NamedTuple):
    ok: bool
    reason: str


class IoUringUnavailable(RuntimeError):
    errno: int
    cause: str
    def __init__(self, message: str, errno: int, cause: str) -> None: ...


def check_support() -> Support: ...


class CoreLoop(asyncio.BaseEventLoop):
    def ring_stats(self) -> RingStats: ...
    def _set_iteration_observer(self, observer: Optional[Callable[[RingStats], object]]) -> None: ...


class IOLoop(CoreLoop): ...
class SocketLoop(IOLoop): ...
class SurfacesLoop(SocketLoop): ...
