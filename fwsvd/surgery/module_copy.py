"""A deep copy of a module tree that shares chosen submodules — the copy a compression starts from.

``copy.deepcopy`` gives the right result but walks every module through pickle's generic protocol
(``__reduce_ex__``, ``__setstate__``, a dozen hook dictionaries each): on BERT-base that walk costs as much
as copying the embeddings. A module's state is its ``__dict__``, so the walk here copies that directly, with
``copy.deepcopy`` semantics for every value: parameters and buffers are cloned (ties between them kept through
the shared memo), other attributes are deep-copied, and a module class that customizes its own copying or
pickling is handed to ``copy.deepcopy`` unchanged.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from torch import nn

from fwsvd.storage.sharing import exclusive

_ATOMIC = (type(None), bool, int, float, complex, str, bytes)
_COPY_HOOKS = ("__deepcopy__", "__reduce_ex__", "__reduce__", "__getstate__", "__setstate__")


def copy_sharing(model: nn.Module, shared: Iterable[nn.Module] = ()) -> nn.Module:
    """``copy.deepcopy(model)``, except that the modules in ``shared`` are the same objects in the copy.

    Under the model's lock (fwsvd.storage.sharing): a copy taken while another thread estimates a Fisher or
    evaluates the model would otherwise carry that pass's modes, ``requires_grad`` flags or hooks.
    """
    memo: dict[int, Any] = {id(module): module for module in shared}
    with exclusive(model):
        return _copy_module(model, memo)


def _copies_like_module(cls: type) -> bool:
    """True when ``cls`` copies and pickles the way nn.Module does, so copying its __dict__ is faithful."""
    return all(getattr(cls, hook, None) is getattr(nn.Module, hook, None) for hook in _COPY_HOOKS)


def _copy_module(module: nn.Module, memo: dict[int, Any]) -> nn.Module:
    found = memo.get(id(module))
    if found is not None:
        return found
    cls = type(module)
    if not _copies_like_module(cls):
        return copy.deepcopy(module, memo)
    duplicate = cls.__new__(cls)
    memo[id(module)] = duplicate
    state: dict[str, Any] = {}
    for key, value in module.__dict__.items():
        if key == "_modules":
            state[key] = {name: None if child is None else _copy_module(child, memo) for name, child in value.items()}
        elif isinstance(value, _ATOMIC):
            state[key] = value
        elif type(value) in (dict, OrderedDict, set):
            # Parameter/buffer dicts and the many (mostly empty) hook dicts: a new container of copies.
            state[key] = _copy_container(value, memo)
        else:
            state[key] = copy.deepcopy(value, memo)
    duplicate.__dict__.update(state)
    return duplicate


def _copy_container(container: dict | set, memo: dict[int, Any]) -> dict | set:
    if not container:
        return type(container)()
    return copy.deepcopy(container, memo)
