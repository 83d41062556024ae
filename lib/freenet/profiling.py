"""What a piece of code asks of the device, counted the same way on every device."""
from __future__ import annotations

from collections import Counter
from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


_ALLOCATIONS = ("aten.empty", "aten.new_empty")      # empty, empty_like, empty_strided, new_empty...


def _is_view(schema) -> bool:
    """Whether an operation only makes views: it writes none of its arguments and returns only
    tensors that alias them (``view``, ``expand``, ``detach``)."""
    writes = any(a.alias_info is not None and a.alias_info.is_write for a in schema.arguments)
    return not writes and bool(schema.returns) and all(r.alias_info is not None for r in schema.returns)


def dispatched_ops(fn: Callable[[], object], launches_only: bool = False) -> Counter[str]:
    """The tensor operations one call of ``fn`` dispatches, backward passes included, by name.

    ``aten._local_scalar_dense`` is a value read back to the host (``.item()``, ``float()``,
    ``if tensor:``): on CUDA, a sync. With ``launches_only``, only the operations that give the device
    work: views (the autograd engine detaches every saved tensor and gradient), bare allocations
    (``empty``) and profiler ranges are left out; the dispatcher sees them, but no kernel runs for them.
    The rest are about one kernel launch each on a GPU (a cuDNN call may launch more), so their number
    sets the call's time when launching outweighs the work.
    """
    ops: Counter[str] = Counter()

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = str(func.overloadpacket)
            # prim.*: metadata queries (fake tensors dispatch prim.device)
            quiet = name.startswith("prim.") or launches_only and (
                name.startswith(_ALLOCATIONS + ("profiler.",)) or _is_view(func._schema))
            if not quiet:
                ops[name] += 1
            return func(*args, **(kwargs or {}))

    with Record():
        fn()
    return ops


def memory_traffic(fn: Callable[[], object]) -> Counter[str]:
    """Bytes the tensor operations of one call of ``fn`` read and write, backward passes included,
    by operation name: each operation reads each of its input tensors once and writes each tensor it
    makes or modifies once.

    That is the device-memory traffic of running the operations one kernel each (eager PyTorch) with
    nothing kept in a cache between them. It is a floor for such a run (a training BatchNorm reads its
    input twice: for the statistics, then to normalise), and fusing kernels saves part of it. Views,
    metadata queries (``prim.device``) and ``empty`` move nothing; ``zeros_like`` and the other
    ``*_like``/``new_*`` factories only write; a broadcast (expanded) input counts at its full size.
    It works on fake tensors (``torch._subclasses.fake_tensor.FakeTensorMode``), so a setting too large
    for the machine is counted without memory or arithmetic (``benchmarks/roofline.py``).
    """
    traffic: Counter[str] = Counter()

    def tensors(tree) -> list[torch.Tensor]:
        return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]

    def size(ts) -> int:
        unique = {id(t): t for t in ts}.values()
        return sum(t.numel() * t.element_size() for t in unique)

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            schema, name = func._schema, str(func.overloadpacket)
            if name.startswith(_ALLOCATIONS):
                return out                                   # allocates, moves nothing
            bound = {**dict(zip((a.name for a in schema.arguments), args)), **kwargs}
            written = tensors([bound[a.name] for a in schema.arguments
                               if a.name in bound and a.alias_info is not None and a.alias_info.is_write])
            made = tensors(out)
            if not written and (not made or _is_view(schema)):
                return out                                   # a view, or no tensor at all
            factory = name.endswith("_like") or name.startswith("aten.new_")
            read = [] if factory else tensors((args, kwargs))
            ids = {id(t) for t in written}
            traffic[name] += size(read) + size(written) + size([t for t in made if id(t) not in ids])
            return out

    with Record():
        fn()
    return traffic
