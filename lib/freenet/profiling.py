"""What a piece of code asks of the device, counted the same way on every device."""
from __future__ import annotations

from collections import Counter
from typing import Callable

from torch.utils._python_dispatch import TorchDispatchMode


def dispatched_ops(fn: Callable[[], object]) -> Counter[str]:
    """The tensor operations one call of ``fn`` dispatches, backward passes included, by name.

    On a GPU each is about one kernel launch (views none), so their number sets the call's time
    when launching outweighs the work. ``aten._local_scalar_dense`` is a value read back to the host
    (``.item()``, ``float()``, ``if tensor:``): on CUDA, a sync.
    """
    ops: Counter[str] = Counter()

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            ops[str(func.overloadpacket)] += 1
            return func(*args, **(kwargs or {}))

    with Record():
        fn()
    return ops
