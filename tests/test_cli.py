"""The `deeplens` command: `info` on a tiny local model, on the default model in a fresh process, and its errors."""
import os, re, subprocess, sys
import pytest
import torch
from deeplens.cli import main, hook_kinds
from deeplens.adapters import ModelConfig
from deeplens.model import load_model, default_model_path

CONFIG_FIELDS = [f.name for f in __import__("dataclasses").fields(ModelConfig)]

def run_cli(*args, timeout=600):
    "`python -m deeplens ARGS` in a new process."
    return subprocess.run([sys.executable, "-m", "deeplens", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})

@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    "A tiny random Llama saved as an HF directory, with the default model's tokenizer."
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig
    d = tmp_path_factory.mktemp("tiny_llama")
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=49152)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(d)
    AutoTokenizer.from_pretrained(default_model_path(verbose=False)).save_pretrained(d)
    return str(d)

def field_value(out, name):
    m = re.search(rf"^\s+{name}\s+(\S.*)$", out, re.M)
    assert m, f"no line for config field {name!r} in:\n{out}"
    return m.group(1).strip()

def test_info_tiny(tiny_dir, capsys):
    assert main(["info", tiny_dir, "--device", "cpu", "--max-new-tokens", "3"]) is None
    out = capsys.readouterr().out
    ref = load_model(tiny_dir, device="cpu", verbose=False)
    for f in CONFIG_FIELDS: assert field_value(out, f) == str(getattr(ref.cfg, f)), f
    n = int(re.search(r"^hook sites\s+(\d+)", out, re.M).group(1))
    assert n == len(ref.hook_names()) == 4 + 21 * 2
    # the by-kind rows account for every site
    rows = re.findall(r"^  (\d+) each\s+(.*(?:\n {18}.*)*)", out, re.M)
    kinds = {k.strip(): int(c) for c, body in rows
             for k in re.sub(r"\s+\(\d+ kinds\)", "", " ".join(body.split())).split(", ")}
    assert kinds == hook_kinds(ref.hook_names()) and sum(kinds.values()) == n
    assert kinds["hook_resid_post"] == kinds["attn.hook_pattern"] == 2 and kinds["hook_embed"] == 1
    assert re.search(r"^load time\s+\d+\.\d+ s", out, re.M)
    comp = re.search(r"^completion\s+'(.*)'  \(greedy, 3 new tokens", out, re.M)
    assert comp and comp.group(1).startswith("The capital of France is"), out

def test_info_returns_dict(tiny_dir, capsys):
    from deeplens.cli import info
    d = info(tiny_dir, device="cpu", dtype="bfloat16", prompt="Hello", max_new_tokens=2)
    assert d["cfg"]["dtype"] == "bfloat16" and d["completion"].startswith("Hello") and d["n_hook_sites"] == 46
    assert "bfloat16" in capsys.readouterr().out

def test_default_model_paris_subprocess():
    "Acceptance: `python -m deeplens info` on the default model; greedy completion contains Paris; load time printed."
    r = run_cli("info")
    assert r.returncode == 0, r.stderr
    comp = re.search(r"^completion\s+(.*)$", r.stdout, re.M)
    assert comp and "Paris" in comp.group(1), r.stdout
    load = re.search(r"^load time\s+(\d+\.\d+) s", r.stdout, re.M)
    assert load, r.stdout
    print(f"default model load time in a new process: {load.group(1)} s")   # shown with -s
    assert field_value(r.stdout, "n_layers") == "30" and field_value(r.stdout, "d_model") == "576"
    assert re.search(r"^hook sites\s+634\b", r.stdout, re.M)

def test_bad_path_exit_2_subprocess():
    r = run_cli("info", "/no/such/model/dir")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["deeplens: error: no such model directory or file: /no/such/model/dir"]
    assert "Traceback" not in r.stderr and r.stdout == ""

@pytest.mark.parametrize("args,msg", [
    (["info", "{tiny}", "--dtype", "float33"], "unknown dtype 'float33'"),
    (["info", "{tiny}", "--dtype", "int8"], "unknown dtype 'int8'"),
    (["info", "{empty}"], "not a Hugging Face model directory"),
    (["info", "{notmodel}"], "could not load model"),       # has a config.json, but not a model's
    (["info", "./missing.gguf"], "no such model directory or file"),
    (["info", "{tiny}", "--max-new-tokens", "-1"], "--max-new-tokens must be >= 0"),
])
def test_errors_one_line(tiny_dir, tmp_path, capsys, args, msg):
    (tmp_path / "notmodel").mkdir(); (tmp_path / "notmodel" / "config.json").write_text("{}")
    args = [a.format(tiny=tiny_dir, empty=tmp_path / "empty", notmodel=tmp_path / "notmodel") for a in args]
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as e: main(args)
    assert e.value.code == 2
    err = [l for l in capsys.readouterr().err.splitlines() if l.startswith("deeplens:")]
    assert len(err) == 1 and err[0].startswith("deeplens: error: ") and msg in err[0], err

def test_traceback_flag(capsys):
    with pytest.raises(Exception, match="no such model"): main(["--traceback", "info", "/no/such/model"])

def test_usage_errors():
    with pytest.raises(SystemExit) as e: main([])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e: main(["info", "--max-new-tokens", "many"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e: main(["--version"])
    assert e.value.code == 0
