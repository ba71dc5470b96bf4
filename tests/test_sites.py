"One resolver for every spelling of a hook site (deeplens.sites): forms, one error for a typo, negative layers, bad types."
import pytest
import torch
from tiny import tiny_hf, tokens, text_llama
from deeplens.model import HookedModel
from deeplens.sites import (resolve, resolve_one, check_layers, check_layer, check_heads, check_positions, check_point,
                            unknown_site, UnknownSiteError, SITE_ALIASES)
from deeplens.adapters import SHORT_NAMES, BLOCK_SITES

@pytest.fixture(scope="module")
def m(): return HookedModel(tiny_hf("llama"))          # 2 layers, 4 heads, 2 key/value heads

@pytest.fixture(scope="module")
def neox(): return HookedModel(tiny_hf("gpt_neox"))    # parallel attention + MLP: no hook_resid_mid

@pytest.fixture(scope="module")
def text_model(tok): return HookedModel(text_llama(tok), tok)

# --- every form, against names written out by hand -----------------------------------------------------------

FORMS = [
    ("blocks.1.hook_resid_post", None, ["blocks.1.hook_resid_post"]),
    ("hook_embed", None, ["hook_embed"]),
    ("blocks.-1.attn.hook_z", None, ["blocks.1.attn.hook_z"]),
    (("resid_post", 1), None, ["blocks.1.hook_resid_post"]),
    (("resid_post", -2), None, ["blocks.0.hook_resid_post"]),
    (("pattern", 0), None, ["blocks.0.attn.hook_pattern"]),
    (("scale", 1, "ln1"), None, ["blocks.1.ln1.hook_scale"]),
    (("normalized", None, "ln_final"), None, ["ln_final.hook_normalized"]),
    ("hook_resid_post", 0, ["blocks.0.hook_resid_post"]),
    ("attn.hook_z", -1, ["blocks.1.attn.hook_z"]),
    ("mlp_post", 1, ["blocks.1.mlp.hook_post"]),
    ("hook_resid_pre", None, ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"]),
    ("embed", None, ["hook_embed"]),
    ("logits", None, ["hook_logits"]),
    ("normalized", None, ["ln_final.hook_normalized"]),
    ("block_output", 1, ["blocks.1.hook_resid_post"]),
    ("mlp_input", 0, ["blocks.0.ln2.hook_normalized"]),
    ("final_norm", None, ["ln_final.hook_normalized"]),
    ("L1H3", None, ["blocks.1.attn.hook_z"]),
    ("L0H1.q", None, ["blocks.0.attn.hook_q"]),
    ("attn1", None, ["blocks.1.hook_attn_out"]),
    ("mlp0", None, ["blocks.0.hook_mlp_out"]),
    ("mlp1.in", None, ["blocks.1.ln2.hook_normalized"]),
    (lambda n: n.endswith("attn.hook_v"), None, ["blocks.0.attn.hook_v", "blocks.1.attn.hook_v"]),
    (["embed", ("z", 0), "mlp1"], None, ["hook_embed", "blocks.0.attn.hook_z", "blocks.1.hook_mlp_out"]),
    (("blocks.0.hook_resid_post", "logits"), None, ["blocks.0.hook_resid_post", "hook_logits"]),
]

@pytest.mark.parametrize("spec,layer,want", FORMS, ids=[repr(f[0])[:40] for f in FORMS])
def test_forms(m, spec, layer, want):
    assert resolve(m, spec, layer) == want
    for n in want: assert n in m.sites

def test_every_short_name_and_alias_is_a_site(m):
    assert all(suffix in BLOCK_SITES for suffix in SHORT_NAMES.values())
    top = [n for n in m.sites if not n.startswith("blocks.")]
    assert all(s in BLOCK_SITES or s in top for s in SITE_ALIASES.values())
    for short, suffix in SHORT_NAMES.items():
        if f"blocks.0.{suffix}" in m.sites: assert resolve(m, (short, 0)) == [f"blocks.0.{suffix}"]

def test_none_and_resolve_one(m):
    assert resolve(m, None) == list(m.sites)
    assert resolve_one(m, "z", 1) == "blocks.1.attn.hook_z"
    with pytest.raises(ValueError, match="names 2 hook sites, not one"): resolve_one(m, "z")

def test_missing_site_says_why(neox):
    with pytest.raises(ValueError, match="parallel"): resolve(neox, ("resid_mid", 0))
    with pytest.raises(ValueError, match="parallel"): resolve(neox, "post_attn_residual", 1)

# --- one typo, one error, wherever it is typed ----------------------------------------------------------------

def test_same_typo_same_error_everywhere(text_model, tmp_path):
    from deeplens.store import ActivationStore
    from deeplens.extractor import resolve_hook, ExtractSingleSample
    from deeplens.analyzer import trace
    from deeplens.patching import activation_patching, logit_diff
    from deeplens.intervene import ReinjectSingleSample
    m, typo = text_model, "resid_pots"
    want = str(unknown_site(m, typo))
    assert want.startswith("unknown hook name 'resid_pots'. Closest valid names: resid_post")
    ids = m.to_tokens("a b c d")
    _, cache = m.run_with_cache(ids)
    def hook(x, hook): return None
    entry_points = {
        "model.site": lambda: m.site(typo),
        "run_with_cache names_filter": lambda: m.run_with_cache(ids, [typo]),
        "run_with_hooks": lambda: m.run_with_hooks(ids, fwd_hooks=[(typo, hook)]),
        "hooks": lambda: m.hooks([(typo, hook)]).__enter__(),
        "add_hook": lambda: m.add_hook(typo, hook),
        "cache key": lambda: cache[typo],
        "store": lambda: ActivationStore.build(m, ["some text to read " * 20], typo, 40, tmp_path / "s", progress=False),
        "extractor": lambda: resolve_hook(m, typo, 0),
        "extractor get_acts": lambda: ExtractSingleSample(m, layer=0).get_acts("a b c", typo),
        "intervene": lambda: ReinjectSingleSample(m).reinject_and_generate("a b c", torch.zeros(3, 32), 0, hook=typo),
        "analyzer trace": lambda: trace(m, ids, sites=[typo]),
        "patching": lambda: activation_patching(m, ids, ids, logit_diff(1, 2), sites=typo),
    }
    for where, call in entry_points.items():
        with pytest.raises((ValueError, KeyError)) as e: call()
        assert want in str(e.value), f"{where}: {e.value}"
    assert not (tmp_path / "s").exists()

def test_unknown_is_a_value_error_subclass(m):
    with pytest.raises(UnknownSiteError): resolve(m, "blocks.0.hook_resid_pots")
    assert issubclass(UnknownSiteError, ValueError)

# --- negative layers: Python's rule everywhere ------------------------------------------------------------------

def test_negative_layers_everywhere(m):
    from deeplens.analyzer import trace
    from deeplens.heads import CausalHeadGating, gate_hooks
    from deeplens.lens import logit_lens
    from deeplens.extractor import resolve_layer
    from deeplens.patching import activation_patching, path_patching, logit_diff
    from deeplens.steering import SteeringVector
    n = m.cfg.n_layers
    ids = tokens(1, 5)
    assert check_layers(m, -1) == [n - 1] and check_layer(m, -n) == 0 and resolve_layer(-1, n) == n - 1
    _, c = m.run_with_cache(ids)
    assert c["resid_post", -1] is c[f"blocks.{n - 1}.hook_resid_post"]
    assert trace(m, ids, layers=[-1], sites="block_output").layers == [n - 1]
    assert CausalHeadGating(m, layers=-1).layers == [n - 1]
    assert [name for name, _ in gate_hooks(m, torch.ones(1, m.cfg.n_heads), layers=[-1])] == [f"blocks.{n - 1}.attn.hook_z"]
    assert logit_lens(m, ids, layers=-1).layers == [n - 1]
    r = activation_patching(m, ids, ids.flip(1), logit_diff(1, 2), layers=[-1], positions="all")
    assert r.coords["layer"] == [n - 1]
    assert path_patching(m, ids, ids.flip(1), "L-2H0", "logits", logit_diff(1, 2)).senders == path_patching(
        m, ids, ids.flip(1), "L0H0", "logits", logit_diff(1, 2)).senders
    sv = SteeringVector(torch.randn(m.cfg.d_model), layer=-1)
    with m.hooks([sv.hook(1.0)]): pass                         # blocks.-1.hook_resid_pre resolves to the last block
    for bad in (n, -n - 1):
        for call in (lambda: check_layers(m, [bad]), lambda: c["resid_post", bad], lambda: logit_lens(m, ids, layers=bad),
                     lambda: CausalHeadGating(m, layers=bad), lambda: trace(m, ids, layers=[bad]),
                     lambda: m.run_with_cache(ids, f"blocks.{bad}.hook_resid_post")):
            with pytest.raises((ValueError, KeyError), match=f"layer {bad} is out of range"): call()

def test_heads_and_positions_negative(m):
    assert check_heads(m, -1) == [m.cfg.n_heads - 1]
    assert check_heads(m, -1, "k") == [m.cfg.n_kv_heads - 1]
    assert check_heads(m, None, "blocks.0.attn.hook_v") == list(range(m.cfg.n_kv_heads))
    assert check_positions([-1, 0], 5) == [4, 0] and check_positions([-1, 0, 4], 5, unique=True) == [0, 4]
    with pytest.raises(ValueError, match="head 4 is out of range: this model has 4 heads, so use 0..3"): check_heads(m, 4)
    with pytest.raises(ValueError, match="site 'k' has 2 key/value heads"): check_heads(m, [2], "k")

def test_bare_int_meanings(m):
    "A bare int is one layer; the cache's residual helpers keep TransformerLens' 'layers before this point' (upto=True)."
    n = m.cfg.n_layers
    assert check_layers(m, 1) == [1]
    assert check_layers(m, 1, upto=True) == [0] and check_layers(m, -1, upto=True) == list(range(n))
    assert check_point(m, None) == n == check_point(m, -1) and check_point(m, -n - 1) == 0
    _, c = m.run_with_cache(tokens())
    assert c.stack("resid_post", 1).shape[0] == 1 and c.stack("resid_post", [1]).shape[0] == 1

# --- bad types --------------------------------------------------------------------------------------------------

def test_bad_types(m):
    for bad in (3, 1.5, b"hook_embed", True):
        with pytest.raises(TypeError, match="hook names are given as"): resolve(m, bad)
    with pytest.raises(TypeError, match="hook names are strings"): resolve(m, ["hook_embed", 3])
    with pytest.raises(TypeError, match="hook names are strings"): resolve(m, ["hook_embed", None])
    with pytest.raises(TypeError, match="layer must be an int"): check_layer(m, "1")
    with pytest.raises(TypeError, match="layer must be an int"): check_layer(m, 1.0)
    with pytest.raises(TypeError, match="bool"): check_layer(m, True)
    with pytest.raises(TypeError, match="layers must be ints"): check_layers(m, [0, 1.5])
    with pytest.raises(TypeError, match="layers must be an int, a list"): check_layers(m, "01")
    with pytest.raises(TypeError, match="heads must be ints"): check_heads(m, [None])
    with pytest.raises(TypeError, match="positions must be an int, a list"): check_positions(2.0, 5)
    with pytest.raises(TypeError): resolve(m, ("resid_post", 1.5))       # not a key: a list holding a float
    with pytest.raises(TypeError): m.run_with_cache(tokens(), 3)
