"""corpus(): builtin python docs, local files and directories, iterables, HF datasets (local json via `datasets`), errors."""
import ast, builtins, inspect, json, sys
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

def test_hf_without_datasets_is_a_clear_error(monkeypatch):
    real = builtins.__import__
    def no_datasets(name, *a, **k):
        if name == "datasets": raise ImportError("no datasets")
        return real(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", no_datasets)
    with pytest.raises(ImportError, match="pip install datasets"):
        list(corpus("HuggingFaceFW/fineweb"))
