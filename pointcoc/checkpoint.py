"""Converting the reference repositories' released state dicts to pointcoc's points-mode models.

Target naming (docs/design.md §12):

* CoC family (``coc_*``): the released "new naming", with every weight of
  ``token_mixer.{f,v,proj}`` and ``mlp.{fc1,fc2}`` as a 2-D ``[out, in]`` matrix
  (1x1 conv weights squeezed); the reducers (``patch_embed.proj.weight``,
  ``network.{odd}.proj.weight``) keep their 4-D convolution layout. The old
  naming ``token_mixer.fc1 / fc2 / fc_v`` becomes ``token_mixer.f / proj / v``.
* PointMLP family: the released names, every weight whose trailing dims are all
  1 (1x1 Conv1d/Conv2d) squeezed to 2-D, and inside the context-cluster modules
  (``pre_blocks_list.{s}.operation.{j}``) ``fc1 -> f``, ``fc_v -> v``, ``fc2 -> proj``.

The conversion is idempotent: converting a converted dict returns it unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Dict, Tuple

from torch import Tensor

from .models.configs import VARIANTS

__all__ = ["COC_MODELS", "POINTMLP_MODELS", "convert_official_state_dict"]

#: Model names whose checkpoints use the CoC (image) naming.
COC_MODELS: Tuple[str, ...] = tuple(VARIANTS)
#: Model names whose checkpoints use the PointMLP naming.
POINTMLP_MODELS: Tuple[str, ...] = ("pointmlp", "pointmlp_elite", "pointmlp_coc", "pointmlp_elite_coc")

_WRAPPER_KEYS = ("state_dict", "model", "net")

# old CoC naming, only under token_mixer (mlp.fc1 / mlp.fc2 keep their names)
_COC_RENAME = re.compile(r"(^|\.)token_mixer\.(fc1|fc2|fc_v)\.")
_COC_MATRIX = re.compile(r"(^|\.)(token_mixer\.(f|v|proj)|mlp\.(fc1|fc2))\.weight$")
# context-cluster modules of PointMLP-CoC: pre_blocks_list.{s}.operation.{j}.{fc1,fc_v,fc2}
_POINTMLP_RENAME = re.compile(r"(^|\.)(pre_blocks_list\.\d+\.operation\.\d+)\.(fc1|fc_v|fc2)\.")
# old -> new names of the context-cluster linear layers (both families)
_CLUSTER_NAMES = {"fc1": "f", "fc_v": "v", "fc2": "proj"}


_MAX_WRAPPING = 8
"""Most checkpoint dicts a state dict is nested in (``{'model': {'state_dict': ...}}`` is 2)."""


def _unwrap(state_dict: object) -> Mapping:
    """Return the mapping of names to tensors inside a raw state dict or a checkpoint dict.

    Refuses (``ValueError``) dicts that contain themselves or nest deeper than
    :data:`_MAX_WRAPPING` levels, instead of following them forever.
    """
    current, seen = state_dict, set()
    for _ in range(_MAX_WRAPPING + 1):
        if not isinstance(current, Mapping):
            raise TypeError(
                "state_dict must be a mapping of parameter names to tensors (or a checkpoint dict holding one "
                f"under {_WRAPPER_KEYS}), got {type(current).__name__}"
            )
        if id(current) in seen:
            raise ValueError("state_dict contains itself (a checkpoint dict that refers back to itself)")
        seen.add(id(current))
        bad = next((key for key, value in current.items() if not isinstance(value, Tensor)), None)
        if bad is None:
            return current
        wrapper = next((key for key in _WRAPPER_KEYS if isinstance(current.get(key), Mapping)), None)
        if wrapper is None:
            raise TypeError(
                f"state_dict must map parameter names to tensors; entry {bad!r} is a "
                f"{type(current[bad]).__name__} and no {_WRAPPER_KEYS} entry holds a state dict"
            )
        current = current[wrapper]
    raise ValueError(f"state_dict is nested more than {_MAX_WRAPPING} checkpoint dicts deep")


def _strip_module(key: str) -> str:
    while key.startswith("module."):
        key = key[len("module.") :]
    return key


def _as_matrix(key: str, tensor: Tensor) -> Tensor:
    """Squeeze a 1x1 conv weight ``[out, in, 1, ...]`` to ``[out, in]``; 2-D weights pass through."""
    if tensor.dim() <= 2:
        return tensor
    if any(size != 1 for size in tensor.shape[2:]):
        raise ValueError(
            f"state_dict entry {key!r} must be a linear or 1x1 convolution weight, got shape {tuple(tensor.shape)}"
        )
    return tensor.reshape(tensor.shape[0], tensor.shape[1])


def _convert_coc(key: str, tensor: Tensor) -> Tuple[str, Tensor]:
    key = _COC_RENAME.sub(lambda m: f"{m.group(1)}token_mixer.{_CLUSTER_NAMES[m.group(2)]}.", key)
    if _COC_MATRIX.search(key):
        tensor = _as_matrix(key, tensor)
    return key, tensor


def _convert_pointmlp(key: str, tensor: Tensor) -> Tuple[str, Tensor]:
    key = _POINTMLP_RENAME.sub(lambda m: f"{m.group(1)}{m.group(2)}.{_CLUSTER_NAMES[m.group(3)]}.", key)
    if key.endswith(".weight") and tensor.dim() > 2 and all(size == 1 for size in tensor.shape[2:]):
        tensor = tensor.reshape(tensor.shape[0], tensor.shape[1])
    return key, tensor


def convert_official_state_dict(name: str, state_dict: Mapping) -> Dict[str, Tensor]:
    """Convert a released checkpoint of model ``name`` to the points-mode model's state dict.

    ``state_dict`` is a raw state dict or a checkpoint dict holding it under
    ``state_dict``, ``model`` or ``net``; ``module.`` prefixes (DataParallel)
    are stripped; old and new naming are accepted. Returns a new dict (the
    input is not modified; tensors may be views of the input's). Idempotent.

    Raises ``ValueError`` for an unknown ``name`` or a self-referential or absurdly
    nested checkpoint dict, and ``TypeError`` when ``state_dict`` is not a mapping
    of names to tensors.
    """
    if name in COC_MODELS:
        convert = _convert_coc
    elif name in POINTMLP_MODELS:
        convert = _convert_pointmlp
    else:
        raise ValueError(f"name must be one of {list(COC_MODELS + POINTMLP_MODELS)}, got {name!r}")
    converted: Dict[str, Tensor] = {}
    for raw_key, tensor in _unwrap(state_dict).items():
        if not isinstance(raw_key, str):
            raise TypeError(f"state_dict keys must be strings, got {type(raw_key).__name__}: {raw_key!r}")
        key, tensor = convert(_strip_module(raw_key), tensor)
        if key in converted:
            raise ValueError(f"state_dict holds two entries that both convert to {key!r}")
        converted[key] = tensor
    return converted
