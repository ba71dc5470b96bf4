__version__ = "0.1.0"

from deeplens.model import load_model, HookedModel
from deeplens.adapters import ModelConfig
from deeplens.cache import ActivationCache
from deeplens.corpus import corpus, Corpus
from deeplens.store import ActivationStore
from deeplens.extractor import ExtractSingleSample, FromHuggingFace
from deeplens.dataset import ActivationsDatasetBuilder
from deeplens.sae import SparseAutoencoder
from deeplens.evals import evaluate_sae, sae_metrics
from deeplens.steering import SteeringVector, generate_with_steering, evaluate_steering
from deeplens.heads import (CausalHeadGating, CHGResult, head_scores, induction_scores, previous_token_scores,
                            duplicate_token_scores)
