__version__ = "0.1.0"

from deeplens.model import load_model, HookedModel
from deeplens.adapters import ModelConfig
from deeplens.cache import ActivationCache
