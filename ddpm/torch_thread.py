"""One thread for all of a server's torch work.

PyTorch's CPU builds run their parallel loops on OpenMP (libgomp), which gives every thread that enters a
parallel region a team of worker threads of its own. While a process has no more of those threads than CPUs,
idle workers spin for a moment between regions and pick up the next one at once; when it has more, libgomp
throttles the spinning and the workers sleep, so each of the thousands of small regions in a sampling run pays a
wake-up. A web server that loads the model on its main thread and samples on its worker threads (gradio runs
each step of a streaming handler on whichever worker is free) has two teams or more, and on a 2-core machine the
app's default 4x4 grid then takes about 1.9x as long as on the thread that loaded the model
(`python bench/bench_threads.py`). So the app loads and samples on one long-lived thread: `TorchThread`.

    tt = torch_thread()                   # the process's one torch thread
    pipe = tt.call(ddpm.load, "checkpoints/fashion-mnist")
    for step in tt.iterate(pipe.stream([7] * 16)):   # every step computed on that thread
        ...
    handler = tt.wrap(handler)            # a gradio handler (function or generator) that runs there
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
_END = object()


class TorchThread:
    """A single long-lived worker thread that runs the calls given to it, one at a time, in order.

    Calls from the thread itself run directly (no deadlock on nesting). Exceptions reach the caller.
    """

    def __init__(self, name: str = "ddpm-torch") -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self.ident: int = self._pool.submit(threading.get_ident).result()

    def on_thread(self) -> bool:
        """Whether the caller is this torch thread."""
        return threading.get_ident() == self.ident

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """fn(*args, **kwargs) computed on the torch thread; blocks until it returns (or raises)."""
        if self.on_thread():
            return fn(*args, **kwargs)
        return self._pool.submit(fn, *args, **kwargs).result()

    def iterate(self, items: Iterator[T]) -> Iterator[T]:
        """The items of an iterator (e.g. a sampler's generator), each one produced on the torch thread.

        The caller consumes them on its own thread; closing this generator early closes `items` there too.
        """
        try:
            while True:
                item = self.call(next, items, _END)
                if item is _END:
                    return
                yield item
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                self.call(close)

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """fn running on the torch thread, with its signature; a generator function stays one."""
        if inspect.isgeneratorfunction(fn):

            @functools.wraps(fn)
            def gen_wrapper(*args: Any, **kwargs: Any) -> Iterator[Any]:
                yield from self.iterate(self.call(fn, *args, **kwargs))

            return gen_wrapper

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return self.call(fn, *args, **kwargs)

        return wrapper


@functools.lru_cache(maxsize=None)
def torch_thread() -> TorchThread:
    """The process's torch thread (created on first use). One per process, because OpenMP teams are."""
    return TorchThread()
