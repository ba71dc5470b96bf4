__version__ = "0.1.0"

from deeplens.model import load_model, HookedModel
from deeplens.adapters import ModelConfig
from deeplens.cache import ActivationCache, keep_freed_memory, release_memory
from deeplens.corpus import corpus, Corpus
from deeplens.store import ActivationStore
from deeplens.extractor import ExtractSingleSample, FromHuggingFace
from deeplens.dataset import ActivationsDatasetBuilder
from deeplens.sae import SparseAutoencoder
from deeplens.evals import evaluate_sae, sae_metrics
from deeplens.steering import SteeringVector, generate_with_steering, evaluate_steering
from deeplens.heads import (CausalHeadGating, CHGResult, head_scores, induction_scores, previous_token_scores,
                            duplicate_token_scores)
from deeplens.train import SAETrainer
from deeplens.features import feature_stats, max_activating_examples, feature_logits, feature_summary
from deeplens.intervene import InterveneFeatures, ReinjectSingleSample, splice_sae, steer_features
from deeplens.analysis import get_top_k_tokens
from deeplens.charts import plot_topk_distribution, generate_feature_heatmap
from deeplens.lens import logit_lens, TunedLens, LensResult
from deeplens.patching import (activation_patching, path_patching, attribution_patching, logit_diff, prob, kl,
                               normalized_effect)
from deeplens.attribution import (direct_logit_attribution, integrated_gradients, sentence_importance,
                                  neuron_attribution)
from deeplens.analyzer import ModelAnalyzer, ActivationRecord, score, trace
from .display import install as _install_displays; _install_displays()

_WIDGETS = ("TokenHeatmap", "LogitLensView", "AttentionView", "TrainingMonitor", "FeatureExplorer", "SteeringPanel")

def __getattr__(name):
    "The widget classes load on first use: `import deeplens` must not import anywidget / ipywidgets."
    if name in _WIDGETS:
        from deeplens import widgets
        return getattr(widgets, name)
    raise AttributeError(f"module 'deeplens' has no attribute {name!r}")
