"""ddpm.torch_thread: one long-lived thread runs the calls, generators and handlers given to it."""

from __future__ import annotations

import inspect
import threading

import pytest

from ddpm.torch_thread import TorchThread, torch_thread


@pytest.fixture(scope="module")
def tt():
    return TorchThread()


def test_call_runs_on_one_thread_that_is_not_the_callers(tt):
    idents = {tt.call(threading.get_ident) for _ in range(5)}
    assert idents == {tt.ident} and tt.ident != threading.get_ident()
    assert tt.call(lambda a, b=0: a * 10 + b, 4, b=2) == 42
    assert not tt.on_thread() and tt.call(tt.on_thread)


def test_exceptions_reach_the_caller(tt):
    def bad(x):
        raise ValueError(f"bad value {x!r}; use 0..3")

    with pytest.raises(ValueError, match=r"bad value 7; use 0\.\.3"):
        tt.call(bad, 7)
    assert tt.call(lambda: "still alive") == "still alive"


def test_a_call_from_the_thread_itself_runs_directly(tt):
    assert tt.call(lambda: tt.call(lambda: threading.get_ident())) == tt.ident  # would deadlock if queued


def test_iterate_produces_every_item_on_the_thread_in_order(tt):
    seen = []

    def gen():
        for i in range(4):
            seen.append(threading.get_ident())
            yield i * i

    assert list(tt.iterate(gen())) == [0, 1, 4, 9]
    assert seen == [tt.ident] * 4


def test_closing_iterate_early_closes_the_generator_on_the_thread(tt):
    closed = []

    def gen():
        try:
            for i in range(100):
                yield i
        finally:
            closed.append(threading.get_ident())

    it = tt.iterate(gen())
    assert [next(it), next(it)] == [0, 1]
    it.close()
    assert closed == [tt.ident]


def test_wrap_keeps_the_signature_and_generator_nature(tt):
    def handler(model, label, cfg=2.0):
        """doc"""
        return threading.get_ident(), model, label, cfg

    def streaming(n, *, start=0):
        for i in range(start, start + n):
            yield i, threading.get_ident()

    h, s = tt.wrap(handler), tt.wrap(streaming)
    assert inspect.signature(h) == inspect.signature(handler) and h.__doc__ == "doc"
    assert not inspect.isgeneratorfunction(h) and inspect.isgeneratorfunction(s)
    assert h("m", "7", cfg=3.0) == (tt.ident, "m", "7", 3.0)
    assert list(s(3, start=5)) == [(5, tt.ident), (6, tt.ident), (7, tt.ident)]


def test_the_process_has_one_shared_torch_thread():
    assert torch_thread() is torch_thread()
    assert torch_thread().call(threading.get_ident) == torch_thread().ident
