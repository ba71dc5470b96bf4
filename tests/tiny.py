"Tiny random models of every supported family, built from configs (no downloads)."
import copy
import torch
import transformers as T

COMMON = dict(vocab_size=97)

def _llama_kw(**kw):
    return dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=64, **COMMON, **kw)

CONFIGS = {
    "gpt2": lambda: T.GPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=64, **COMMON),
    "llama": lambda: T.LlamaConfig(**_llama_kw()),
    "mistral": lambda: T.MistralConfig(**_llama_kw(sliding_window=5)),
    "qwen2": lambda: T.Qwen2Config(**_llama_kw()),
    "qwen3": lambda: T.Qwen3Config(**_llama_kw(head_dim=8)),
    "gemma": lambda: T.GemmaConfig(**_llama_kw(head_dim=8)),
    "gemma2": lambda: T.Gemma2Config(**_llama_kw(head_dim=8, sliding_window=5, attn_logit_softcapping=5.0,
                                                 final_logit_softcapping=30.0, query_pre_attn_scalar=8)),
    "gpt_neox": lambda: T.GPTNeoXConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                        rotary_pct=0.5, use_parallel_residual=True, max_position_embeddings=64, **COMMON),
    "gptj": lambda: T.GPTJConfig(n_embd=32, n_layer=2, n_head=4, rotary_dim=4, n_positions=64, **COMMON),
    "phi3": lambda: T.Phi3Config(**_llama_kw(pad_token_id=0)),
    "opt": lambda: T.OPTConfig(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                               word_embed_proj_dim=32, max_position_embeddings=64, **COMMON),
}
FAMILIES = list(CONFIGS)

def tiny_hf(family: str, seed: int = 0, attn: str = "sdpa"):
    "A random HF causal LM of `family`, in eval mode, with weights large enough to give peaked attention."
    torch.manual_seed(seed)
    if family in ("gptj", "gemma2"): attn = "eager"   # no SDPA path in transformers for these
    hf = T.AutoModelForCausalLM.from_config(CONFIGS[family](), attn_implementation=attn)
    with torch.no_grad():
        for n, p in hf.named_parameters():
            if p.ndim >= 2: p.normal_(0, 0.3)
            elif "norm" in n or "ln" in n: p.normal_(1.0 if family not in ("gemma", "gemma2") else 0.0, 0.1)
            else: p.normal_(0, 0.1)
    return hf.eval()

def eager_copy(hf):
    "The same weights with HF's eager attention, which can return attention weights."
    e = copy.deepcopy(hf)
    e.config._attn_implementation = "eager"
    return e

def tokens(batch=2, pos=7, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, COMMON["vocab_size"], (batch, pos), generator=g)

def text_llama(tok, seed: int = 0, n_ctx: int = 128):
    "A tiny random Llama (2 layers, d32) sized for tokenizer `tok`, so text, stores and generation work."
    torch.manual_seed(seed)
    cfg = T.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=n_ctx)
    return T.AutoModelForCausalLM.from_config(cfg).eval()

def widen(hf):
    "Redraw `hf`'s random weights wide enough (in place) that SAE features and steering visibly change text."
    with torch.no_grad():
        for n, p in hf.named_parameters():
            if p.ndim >= 2: p.normal_(0, 0.3)
            elif "norm" in n: p.normal_(1.0, 0.2)
    return hf

def topic_store(model, hooks, path, n_tokens: int = 1200):
    "An ActivationStore of `n_tokens` rows at `hooks` over the first six pydoc topics (contexts of 32)."
    from pydoc_data.topics import topics
    from deeplens.store import ActivationStore
    return ActivationStore.build(model, [topics[t] for t in sorted(topics)[:6]], hooks, n_tokens, path,
                                 context_size=32, progress=False)

def spread_sae(hook: str):
    "A TopK SAE 32 → 64, k=4 (seed 0) whose encoder biases spread from -2 to 2, so latents fire at different rates."
    from deeplens.sae import SparseAutoencoder
    torch.manual_seed(0)
    s = SparseAutoencoder(32, 64, k=4, hook_name=hook)
    with torch.no_grad(): s.b_enc.copy_(torch.linspace(-2, 2, 64))
    return s.eval()
