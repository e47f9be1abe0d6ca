"""Count the host synchronisations of one forward pass, per model and per call site.

A host sync is any point where Python needs a tensor's value (on a GPU: waits for the
device). They are counted at the dispatcher, so the count is the same on CPU and CUDA:

- ``aten::_local_scalar_dense``: ``.item()``, ``bool(t)``, ``int(t)``, ``float(t)``;
- ops whose output size depends on the data: ``nonzero``, ``masked_select``, ``unique``,
  ``bincount``, ``repeat_interleave`` (without ``output_size``), boolean-mask indexing;
- ``Tensor.tolist()`` (Python-level, patched while counting).

    python benchmarks/host_syncs.py                       # pointmlp, pointmlp_coc, coc_tiny, coc_tiny_plain
    python benchmarks/host_syncs.py --models pointmlp_coc --sites
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import traceback
from typing import Callable, Counter, Dict, List, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.harness import markdown_table, pin_threads  # noqa: E402

__all__ = ["SyncCounter", "count_forward_syncs", "main"]

_SYNC_OPS = {
    "_local_scalar_dense",
    "nonzero",
    "masked_select",
    "_unique2",
    "unique_dim",
    "unique_consecutive",
    "bincount",
    "repeat_interleave",
}


def _call_site() -> str:
    """The innermost ``pointcoc`` frame of the current stack (``path:line``)."""
    for frame in reversed(traceback.extract_stack()):
        if os.sep + "pointcoc" + os.sep in frame.filename:
            return f"{os.path.relpath(frame.filename, ROOT)}:{frame.lineno}"
    return "<outside pointcoc>"


def _is_sync(func, args, kwargs) -> bool:
    name = func.overloadpacket.__name__
    if name == "repeat_interleave":
        return isinstance(args[0], torch.Tensor) and kwargs.get("output_size") is None and len(args) < 4
    if name == "index":  # boolean-mask indexing has a data-dependent size
        return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] if i is not None)
    return name in _SYNC_OPS


class SyncCounter(TorchDispatchMode):
    """Counts host syncs (see the module docstring) by call site while active."""

    def __init__(self) -> None:
        super().__init__()
        self.sites: Counter[str] = collections.Counter()
        self._tolist: Optional[Callable] = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _is_sync(func, args, kwargs):
            self.sites[f"{func.overloadpacket.__name__} @ {_call_site()}"] += 1
        return func(*args, **kwargs)

    def __enter__(self):
        self._tolist = torch.Tensor.tolist
        counter, original = self, self._tolist

        def tolist(t):
            counter.sites[f"tolist @ {_call_site()}"] += 1
            return original(t)

        torch.Tensor.tolist = tolist
        return super().__enter__()

    def __exit__(self, *exc):
        torch.Tensor.tolist = self._tolist
        return super().__exit__(*exc)

    @property
    def total(self) -> int:
        return sum(self.sites.values())


def _model_and_input(name: str, batch: int):
    import pointcoc as pc

    torch.manual_seed(0)
    if name.startswith("pointmlp"):
        return pc.create_model(name), torch.randn(batch, 3, 1024)
    return pc.create_model(name), pc.image_to_points(torch.rand(batch, 3, 224, 224))


def count_forward_syncs(name: str, batch: int = 2, train: bool = False) -> SyncCounter:
    """Host syncs of one forward of model ``name`` (after one uncounted warm-up forward)."""
    model, inp = _model_and_input(name, batch)
    model.train(train)
    with torch.set_grad_enabled(train):
        model(inp)
        with SyncCounter() as counter:
            model(inp)
    return counter


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["pointmlp", "pointmlp_coc", "coc_tiny", "coc_tiny_plain"])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--sites", action="store_true", help="also list the call sites")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    pin_threads(args.threads)
    rows: List[Dict] = []
    for name in args.models:
        for train in (False, True):
            counter = count_forward_syncs(name, args.batch, train)
            rows.append({"model": name, "mode": "train" if train else "eval", "host syncs / forward": counter.total})
            if args.sites:
                for site, n in counter.sites.most_common():
                    print(f"{name} {'train' if train else 'eval'}: {n:4d}  {site}")
    print(markdown_table(rows))
    print(f"batch {args.batch}; measured now (torch {torch.__version__})")


if __name__ == "__main__":
    main()
