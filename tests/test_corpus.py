"""corpus(): builtin python docs, local files and directories, iterables, HF datasets (local json via `datasets`), errors."""
import ast, builtins, inspect, json, shutil, sys
from pathlib import Path
import pytest
from deeplens.corpus import corpus, Corpus, python_docs

def test_builtin_python_docs_is_deterministic_and_real():
    from pydoc_data.topics import topics
    c = corpus("builtin:python-docs")
    first = c.take(len(topics) + 50)
    assert first[:3] == [topics[k] for k in sorted(topics)[:3]]               # topics first, sorted by name
    assert c.take(len(topics) + 50) == first                                  # re-iterable, same order
    # then standard-library docstrings, read from the source without importing
    import abc
    assert inspect.cleandoc(abc.__doc__) in first[len(topics):]
    assert all(isinstance(d, str) and d.strip() for d in first)
    assert repr(c) == "Corpus('builtin:python-docs')" and c.description == {"source": "builtin:python-docs"}
    with pytest.raises(ValueError, match="unknown builtin"): corpus("builtin:nope")

def test_text_files(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("line one\nline two\n\nsecond para\n")
    assert list(corpus(p)) == ["line one\nline two\n\nsecond para\n"]
    assert list(corpus(p, sample_by="line")) == ["line one", "line two", "second para"]
    assert list(corpus(str(p), sample_by="paragraph")) == ["line one\nline two", "second para"]
    with pytest.raises(ValueError, match="sample_by"): corpus(p, sample_by="word")

def test_jsonl_parquet_and_directory(tmp_path):
    import pyarrow as pa, pyarrow.parquet as pq
    (tmp_path / "b.jsonl").write_text('{"text": "j1", "id": 1}\n\n{"text": "j2", "id": 2}\n')
    pq.write_table(pa.table({"body": ["p1", "p2", "p3"], "n": [1, 2, 3]}), tmp_path / "a.parquet")
    (tmp_path / "sub").mkdir(); (tmp_path / "sub" / "c.txt").write_text("t1")
    (tmp_path / "ignored.csv").write_text("x")
    assert list(corpus(tmp_path / "b.jsonl")) == ["j1", "j2"]
    assert list(corpus(tmp_path / "a.parquet", text_field="body")) == ["p1", "p2", "p3"]
    with pytest.raises(ValueError, match=r"available fields: \['body', 'n'\]"):
        corpus(tmp_path / "a.parquet")                          # checked before anything is read
    with pytest.raises(ValueError, match=r"available fields: \['id', 'text'\]"):
        list(corpus(tmp_path / "b.jsonl", text_field="content"))
    d = tmp_path / "docs"; d.mkdir()
    (d / "b.jsonl").write_text('{"text": "j"}\n'); (d / "a.txt").write_text("t"); (d / "z").mkdir(); (d / "z" / "c.txt").write_text("u")
    c = corpus(d)
    assert list(c) == ["t", "j", "u"] and list(c) == ["t", "j", "u"]        # sorted by path, re-iterable
    assert c.description["files"] == 3
    empty = tmp_path / "empty"; empty.mkdir()
    with pytest.raises(ValueError, match="holds no"): corpus(empty)

def test_bad_documents_and_paths(tmp_path):
    (tmp_path / "n.jsonl").write_text('{"text": "ok"}\n{"text": null}\n')
    with pytest.raises(TypeError, match="document 1 .* NoneType"): list(corpus(tmp_path / "n.jsonl"))
    (tmp_path / "broken.jsonl").write_text('{"text": "ok"}\n{oops\n')
    with pytest.raises(ValueError, match="broken.jsonl:2 is not valid JSON"): list(corpus(tmp_path / "broken.jsonl"))
    with pytest.raises(FileNotFoundError): corpus(tmp_path / "missing.txt")
    with pytest.raises(FileNotFoundError): corpus("./nowhere/data")
    (tmp_path / "x.csv").write_text("a")
    with pytest.raises(ValueError, match="unsupported file type"): corpus(tmp_path / "x.csv")
    with pytest.raises(TypeError, match="iterable of strings"): corpus(42)

def test_iterables():
    docs = ["a b", "c"]
    c = corpus(docs)
    assert list(c) == docs and list(c) == docs and next(corpus(docs)) == "a b"
    assert c.description == {"source": "iterable:list", "documents": 2}
    assert list(corpus([{"text": "x", "k": 1}])) == ["x"]
    with pytest.raises(ValueError, match=r"available fields: \['k'\]"): list(corpus([{"k": 1}]))
    with pytest.raises(TypeError, match="item 1 .* int"): list(corpus(["a", 3]))
    g = corpus(d for d in docs)
    assert list(g) == docs
    with pytest.raises(RuntimeError, match="one-shot"): list(g)
    assert corpus(c) is c

def test_hf_datasets_streaming_offline(tmp_path):
    "A dataset name goes to datasets.load_dataset (here the local 'json' builder, streaming)."
    pytest.importorskip("datasets")
    f = tmp_path / "d.jsonl"
    f.write_text("".join(json.dumps({"content": f"doc {i}"}) + "\n" for i in range(5)))
    c = corpus("json", data_files=str(f), text_field="content")
    assert list(c) == [f"doc {i}" for i in range(5)]
    assert c.description["source"] == "json" and c.description["split"] == "train"
    with pytest.raises(ValueError, match=r"available fields: \['content'\]"):
        list(corpus("json", data_files=str(f)))
    latin = tmp_path / "latin.jsonl"; latin.write_bytes('{"text": "café"}\n'.encode("latin-1"))
    with pytest.raises(ValueError, match=r"dataset 'json' is not utf-8 text .*encoding='latin-1'"):
        list(corpus("json", data_files=str(latin)))
    assert list(corpus("json", data_files=str(latin), encoding="latin-1")) == ["café"]    # datasets' own argument

def test_hf_without_datasets_is_a_clear_error(monkeypatch):
    real = builtins.__import__
    def no_datasets(name, *a, **k):
        if name == "datasets": raise ImportError("no datasets")
        return real(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", no_datasets)
    with pytest.raises(ImportError, match="pip install datasets"):
        list(corpus("HuggingFaceFW/fineweb"))

def test_non_utf8_files_name_the_file_and_the_fix(tmp_path):
    text = "café au lait\n\nnaïve"
    (tmp_path / "a.txt").write_bytes(text.encode("latin-1"))
    (tmp_path / "b.jsonl").write_bytes(json.dumps({"text": "x"}).encode() + b"\n" + '{"text": "é"}'.encode("latin-1") + b"\n")
    fix = r"encoding='latin-1'\), or errors='replace'"
    for sample_by in ("document", "line", "paragraph"):
        with pytest.raises(ValueError, match=rf"a\.txt is not utf-8 text \(invalid continuation byte: b'\\xe9'.*{fix}"):
            list(corpus(tmp_path / "a.txt", sample_by=sample_by))
    with pytest.raises(ValueError, match=rf"b\.jsonl is not utf-8 text .*{fix}"): list(corpus(tmp_path / "b.jsonl"))
    d = tmp_path / "dir"; d.mkdir()
    (d / "good.txt").write_text("fine"); shutil.copy(tmp_path / "a.txt", d / "z.txt")
    with pytest.raises(ValueError, match=r"dir/z\.txt is not utf-8 text"): list(corpus(d))      # which file, in a directory
    assert list(corpus(tmp_path / "a.txt", encoding="latin-1")) == [text]
    assert list(corpus(tmp_path / "a.txt", encoding="latin-1", sample_by="paragraph")) == ["café au lait", "naïve"]
    assert list(corpus(tmp_path / "b.jsonl", encoding="latin-1")) == ["x", "é"]
    assert list(corpus(tmp_path / "a.txt", errors="replace", sample_by="line")) == ["caf\ufffd au lait", "na\ufffdve"]
    with pytest.raises(ValueError, match="not a Python codec"): corpus(tmp_path / "a.txt", encoding="utf-9")
    with pytest.raises(ValueError, match="error handler"): corpus(tmp_path / "a.txt", errors="ignore-ish")
