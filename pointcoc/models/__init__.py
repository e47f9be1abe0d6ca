"""Points-mode models and the model registry."""

from . import coc, pointmlp  # noqa: F401  (importing them registers their models)
from .coc import ContextClusterNet
from .registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model", "ContextClusterNet"]
