"""Points-mode models and the model registry."""
from . import coc  # noqa: F401  (registers the CoC variants)
from . import pointmlp  # noqa: F401  (registers the models)
from .coc import ContextClusterNet
from .registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model", "ContextClusterNet"]
