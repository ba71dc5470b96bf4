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
    assert r.stderr.strip().splitlines() == ["deeplens info: error: no such model directory or file: /no/such/model/dir"]
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
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("deeplens info: error: ") and msg in err[0], err

def test_traceback_flag(capsys):
    with pytest.raises(Exception, match="no such model"): main(["--traceback", "info", "/no/such/model"])

def test_usage_errors():
    with pytest.raises(SystemExit) as e: main([])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e: main(["info", "--max-new-tokens", "many"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e: main(["--version"])
    assert e.value.code == 0

# --- deeplens extract ------------------------------------------------------------------------------------------

from deeplens.cli import parse_count
from deeplens.corpus import corpus
from deeplens.store import ActivationStore

HOOKS2 = "blocks.0.hook_resid_post,blocks.1.mlp.hook_post"

@pytest.fixture(scope="module")
def docs_file(tmp_path_factory):
    import json
    texts = [f"Document {i}: the activation store packs text into contexts, and every token becomes a row of "
             f"activations at each hook that was asked for, number {i * 7}." for i in range(40)]
    p = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    p.write_text("".join(json.dumps({"body": t}) + "\n" for t in texts))
    return p

def store_rows(path):
    st = ActivationStore(path)
    return st, {h: st.get(slice(None), h) for h in st.hooks}, st.token_index(slice(None))

def test_extract_matches_api_and_cache(tiny_dir, docs_file, tmp_path, capsys):
    "`deeplens extract` writes the store the Python API writes with the same arguments; rows match run_with_cache."
    args = ["extract", "--model", tiny_dir, "--hooks", HOOKS2, "--corpus", str(docs_file), "--text-field", "body",
            "--tokens", "0.5k", "--out", str(tmp_path / "cli"), "--context-size", "32", "--batch-size", "4", "--no-progress"]
    assert main(args) is None
    out = capsys.readouterr().out
    assert re.search(r"^rows\s+500\b", out, re.M) and "blocks.1.mlp.hook_post  (width 64)" in out, out
    m = load_model(tiny_dir, device="cpu", verbose=False)
    api = ActivationStore.build(m, corpus(str(docs_file), text_field="body"), HOOKS2.split(","), 500, tmp_path / "api",
                                context_size=32, batch_size=4, progress=False)
    st, rows, idx = store_rows(tmp_path / "cli")
    _, rows_api, idx_api = store_rows(api.path)
    assert st.context_size == 32 and st.meta["dtype"] == "float32" and len(st) == 500
    for h in rows: assert torch.equal(rows[h], rows_api[h]), h       # exact: the same build (model, batches, shapes) twice
    for k in idx: assert torch.equal(idx[k], idx_api[k]), k
    # independent check of a few contexts: rebuild each from its stored token ids and run the model
    toks = st.tokens(slice(None))
    for c in idx["context"].unique()[:3].tolist():
        sel = (idx["context"] == c).nonzero()[:, 0]
        pos = idx["context_pos"][sel]
        ctx = torch.full((32,), m.tokenizer.bos_token_id)
        ctx[pos] = toks[sel]
        _, cache = m.run_with_cache(ctx[None], HOOKS2.split(","))
        for h in rows: torch.testing.assert_close(rows[h][sel], cache[h][0, pos], atol=1e-5, rtol=1e-5)

def test_extract_resume_overwrite_and_refusals(tiny_dir, docs_file, tmp_path, capsys):
    base = ["extract", "--model", tiny_dir, "--corpus", str(docs_file), "--text-field", "body", "--tokens", "200",
            "--out", str(tmp_path / "s"), "--context-size", "32", "--no-progress"]
    main(base + ["--hooks", "blocks.0.hook_resid_post"])
    before = store_rows(tmp_path / "s")[1]
    capsys.readouterr()
    with pytest.raises(SystemExit) as e: main(base + ["--hooks", "blocks.0.hook_resid_post"])      # exists: needs --resume
    err = capsys.readouterr().err
    assert e.value.code == 2 and "pass --resume to continue" in err and "--overwrite to rebuild" in err and "=True" not in err
    assert main(base + ["--hooks", "blocks.0.hook_resid_post", "--resume"]) is None                  # reuse the finished store
    assert torch.equal(store_rows(tmp_path / "s")[1]["blocks.0.hook_resid_post"], before["blocks.0.hook_resid_post"])  # exact: the same files, not rewritten
    with pytest.raises(SystemExit) as e: main(base + ["--hooks", "blocks.1.hook_resid_post", "--resume"])   # another hook
    assert e.value.code == 2 and "different ActivationStore" in capsys.readouterr().err
    main(base + ["--hooks", "blocks.1.hook_resid_post", "--overwrite", "--dtype", "bfloat16"])
    st = ActivationStore(tmp_path / "s")
    assert st.hooks == ["blocks.1.hook_resid_post"] and st.dtype == torch.bfloat16 and len(st) == 200

@pytest.mark.parametrize("extra,msg", [
    (["--hooks", "blocks.0.hook_resid_postt"], "unknown hook name 'blocks.0.hook_resid_postt'"),
    (["--hooks", "blocks.9.hook_resid_post"], "layer 9 is out of range"),
    (["--hooks", ","], "--hooks is empty"),
    (["--hooks", "blocks.0.hook_resid_post", "--context-size", "0"], "--context-size must be a positive int, got 0"),
    (["--hooks", "blocks.0.hook_resid_post", "--context-size", "4000"], "--context-size 4000 exceeds the model's maximum"),
    (["--hooks", "blocks.0.hook_resid_post", "--resume", "--overwrite"], "pass --resume (continue the store in --out) or --overwrite"),
])
def test_extract_errors_write_nothing(tiny_dir, docs_file, tmp_path, capsys, extra, msg):
    with pytest.raises(SystemExit) as e:
        main(["extract", "--model", tiny_dir, "--corpus", str(docs_file), "--tokens", "100", "--out", str(tmp_path / "o"), *extra])
    assert e.value.code == 2
    err = [l for l in capsys.readouterr().err.splitlines() if "error" in l]
    assert len(err) == 1 and err[0].startswith("deeplens extract: error: ") and msg in err[0], err
    assert "=" not in err[0].split("error: ", 1)[1], err          # no library keyword (name=value) left
    assert not (tmp_path / "o").exists()

def test_extract_usage_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as e: main(["extract", "--hooks", "x", "--corpus", "c", "--out", "o"])    # no --tokens
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e: main(["extract", "--hooks", "x", "--corpus", "c", "--out", "o", "--tokens", "lots"])
    assert e.value.code == 2 and "argument --tokens: must be a whole count > 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["extract", "--hooks", "x", "--corpus", str(tmp_path / "missing.jsonl"), "--out", "o", "--tokens", "10"])
    assert e.value.code == 2 and "no such file" in capsys.readouterr().err
    assert parse_count("1.5M") == 1_500_000 and parse_count("2k") == 2000 and parse_count("1e6") == 10**6

def test_extract_torchrun_two_ranks_equals_single(tiny_dir, docs_file, tmp_path):
    "`torchrun --nproc-per-node 2 -m deeplens extract` (gloo, CPU) holds exactly the rows of a one-process build."
    common = ["extract", "--model", tiny_dir, "--hooks", HOOKS2, "--corpus", str(docs_file), "--text-field", "body",
              "--tokens", "700", "--context-size", "32", "--batch-size", "4", "--no-progress"]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "deeplens",
                        *common, "--out", str(tmp_path / "dist")], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert re.search(r"^rows\s+700\s+\(.*2 ranks\)", r.stdout, re.M), r.stdout      # reported once, by rank 0
    assert (tmp_path / "dist" / "rank-00001").is_dir()
    main([*common, "--out", str(tmp_path / "one")])
    _, rows_d, idx_d = store_rows(tmp_path / "dist")
    _, rows_1, idx_1 = store_rows(tmp_path / "one")
    for h in rows_1: torch.testing.assert_close(rows_d[h], rows_1[h], atol=1e-6, rtol=0)
    for k in idx_1: assert torch.equal(idx_d[k], idx_1[k]), k

# --- errors in the command line's words ------------------------------------------------------------------------

from deeplens.cli import cli_words, flag_table, build_parser, LIBRARY_WORDS

def one_error_line(capsys, command):
    "The single `deeplens COMMAND: error: ...` line on stderr (other stderr lines are progress bars)."
    err = [l for l in capsys.readouterr().err.splitlines() if ": error: " in l]
    assert len(err) == 1 and err[0].startswith(f"deeplens {command}: error: "), err
    return err[0]

def test_demo_layer_out_of_range(tiny_dir, tmp_path, capsys):
    "`--layer 99` on a 2-layer model names the valid range (it used to wrap modulo n_layers) and writes nothing."
    for bad in ("99", "2", "-3"):
        with pytest.raises(SystemExit) as e:
            main(["demo", "--model", tiny_dir, "--layer", bad, "--out", str(tmp_path / "d"), "--no-progress"])
        assert e.value.code == 2
        line = one_error_line(capsys, "demo")
        assert f"--layer {bad} is out of range" in line and "0..1" in line and "-2..-1" in line, line
    assert not (tmp_path / "d").exists()

@pytest.mark.parametrize("extra,msg", [
    (["--epochs", "0"], "--epochs 0 is not a positive int"),          # checked before the (default) model loads
    (["--prompt", " "], "--prompt ' ' is empty"),
    (["--model", "/no/such/dir"], "no such model directory or file: /no/such/dir"),
    (["--tokens", "0"], None),                                         # argparse's own check (usage + error)
])
def test_demo_argument_errors(tmp_path, capsys, extra, msg):
    with pytest.raises(SystemExit) as e: main(["demo", "--out", str(tmp_path / "d"), "--no-progress", *extra])
    assert e.value.code == 2
    if msg: assert msg in one_error_line(capsys, "demo")
    else: assert "argument --tokens: must be a whole count > 0" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()

@pytest.mark.parametrize("command", ["extract", "train", "demo"])
def test_out_is_a_file_fails_before_any_work(tiny_dir, docs_file, tmp_path, capsys, command):
    f = tmp_path / "file.txt"; f.write_text("not a directory")
    args = {"extract": ["--model", tiny_dir, "--hooks", "blocks.0.hook_resid_post", "--corpus", str(docs_file), "--tokens", "100"],
            "train": ["--store", str(tmp_path / "no-store"), "--tokens", "100"],      # the store is read after the check
            "demo": ["--model", tiny_dir]}[command]
    for out, msg in ((f, f"--out {f} is a file, not a directory"), (f / "sub", f"--out {f / 'sub'} cannot be created: {f} is a file")):
        with pytest.raises(SystemExit) as e: main([command, *args, "--out", str(out), "--no-progress"])
        assert e.value.code == 2 and msg in one_error_line(capsys, command)
    assert f.read_text() == "not a directory"

def test_cli_words_reads_the_subcommand_flags():
    "Library keywords become the flags of the subcommand that failed, from its own parser and LIBRARY_WORDS."
    subs = {a.dest: a for a in build_parser()._actions if a.dest == "command"}["command"].choices
    ex = flag_table(subs["extract"], LIBRARY_WORDS["extract"])
    assert ex["out_dir"] == ex["out"] == ("--out", True) and ex["resume"] == ("--resume", False)
    assert ex["n_tokens"] == ("--tokens", True) and ex["model_dtype"] == ("--model-dtype", True)
    msg = ("out_dir /x already holds a different ActivationStore (hooks differ). Pass overwrite=True to replace it, "
           "or choose another out_dir; n_tokens=0 is not positive, batch_size must be >= 1")
    assert cli_words(msg, ex) == ("--out /x already holds a different ActivationStore (hooks differ). Pass --overwrite to "
                                  "replace it, or choose another --out; --tokens 0 is not positive, --batch-size must be >= 1")
    tr = flag_table(subs["train"], LIBRARY_WORDS["train"])
    assert cli_words("resume_from=True and total_tokens=5 (lrs_type='cosine')", tr) == "--resume and --tokens 5 (--lrs 'cosine')"
    # untouched: words that are no flag of this command, attribute and call syntax, and already-translated flags
    assert cli_words("the model needs a tokenizer; cfg.batch_size; batch_size(); --batch-size", ex) == \
        "the model needs a tokenizer; cfg.batch_size; batch_size(); --batch-size"
