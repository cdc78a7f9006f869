"""A model folder is data, never a program: models load from local files only, with no code from the folder
(``trust_remote_code=False``), from safetensors or GGUF weights only, and nothing is unpickled outside the
restricted unpickler (site_agent/data/benchmark/cmekg.py).

Two halves. A static check reads every Python file of the product (coordinator, site_agent, protos, bench)
as a syntax tree and flags each loading call that breaks a rule; a self-test shows the check catches each
kind of breach. A runtime check builds booby-trapped model folders (a pickle that creates a file when
unpickled, a config naming custom code that creates a file when imported) and loads them with the site's
LLM backend: the traps never fire.
"""

from __future__ import annotations

import ast
import json
import pickle
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("coordinator", "site_agent", "protos", "bench")
# The one place a pickle is read: a find_class that refuses every global (tested in tests/unit/site_agent).
RESTRICTED_UNPICKLER = Path("site_agent/data/benchmark/cmekg.py")

PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def _name(node: ast.AST) -> str:
    """Dotted name of a call's target: ``torch.load``, ``AutoModelForCausalLM.from_pretrained``."""
    if isinstance(node, ast.Attribute):
        inner = _name(node.value)
        return f"{inner}.{node.attr}" if inner else node.attr
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Call):
        return _name(node.func)
    return ""


def _kw(call: ast.Call, key: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == key), None)


def _is_const(node: ast.expr | None, value: object) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def _has_kwargs_splat(call: ast.Call) -> bool:
    return any(k.arg is None for k in call.keywords)


def problems_in(source: str, path: Path) -> list[str]:
    """Every breach of the loading rules in one file, as 'path:line: what'."""
    tree = ast.parse(source)
    out: list[str] = []

    def bad(node: ast.AST, what: str) -> None:
        out.append(f"{path}:{getattr(node, 'lineno', 0)}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "trust_remote_code" and not _is_const(node.value, False):
            bad(node.value, "trust_remote_code must be the constant False")
        if isinstance(node, ast.ClassDef) and any(_name(b).endswith("Unpickler") for b in node.bases):
            finds = [f for f in node.body if isinstance(f, ast.FunctionDef) and f.name == "find_class"]
            if path != RESTRICTED_UNPICKLER or not finds:
                bad(node, f"unpickler {node.name} outside the restricted unpickler")
        if not isinstance(node, ast.Call):
            continue
        name = _name(node.func)
        head, _, last = name.rpartition(".")
        if last == "from_pretrained":
            if _has_kwargs_splat(node):
                bad(node, f"{name}(**kwargs): the safety arguments must be visible")
            if not _is_const(_kw(node, "local_files_only"), True):
                bad(node, f"{name} without local_files_only=True")
            if not _is_const(_kw(node, "trust_remote_code"), False):
                bad(node, f"{name} without trust_remote_code=False")
            weights = "Tokenizer" not in head and "Config" not in head
            if weights and not (_is_const(_kw(node, "use_safetensors"), True) or _kw(node, "gguf_file") is not None):
                bad(node, f"{name} without use_safetensors=True (or gguf_file=)")
        elif last == "SentenceTransformer":
            if not _is_const(_kw(node, "local_files_only"), True):
                bad(node, "SentenceTransformer without local_files_only=True")
            if not _is_const(_kw(node, "trust_remote_code"), False):
                bad(node, "SentenceTransformer without trust_remote_code=False")
        elif name == "torch.load" and not _is_const(_kw(node, "weights_only"), True):
            bad(node, "torch.load without weights_only=True")
        elif last in ("load", "loads") and head.rpartition(".")[2] in ("np", "numpy"):
            if not _is_const(_kw(node, "allow_pickle"), False):
                bad(node, f"{name} without allow_pickle=False")
        elif head in PICKLE_MODULES and last in ("load", "loads", "Unpickler", "open"):
            bad(node, f"{name}: unpickling outside the restricted unpickler")
        elif last == "read_pickle" or name in ("yaml.unsafe_load", "yaml.full_load"):
            bad(node, f"{name}: can run code from a file")
        elif name == "yaml.load" and not (_name(_kw(node, "Loader") or ast.Constant(None)).endswith("SafeLoader")):
            bad(node, "yaml.load without Loader=SafeLoader")
        elif last in ("hf_hub_download", "snapshot_download", "from_single_file"):
            bad(node, f"{name}: fetches from a hub")
    return out


def product_files() -> list[Path]:
    return sorted(p for top in PRODUCT if (ROOT / top).is_dir() for p in (ROOT / top).rglob("*.py")
                  if not p.name.endswith(("_pb2.py", "_pb2_grpc.py")))


def test_the_product_breaks_no_loading_rule() -> None:
    files = product_files()
    assert len(files) > 50 and any(f.name == "local_hf.py" for f in files)
    found = [p for f in files for p in problems_in(f.read_text(encoding="utf-8"), f.relative_to(ROOT))]
    assert not found, "\n".join(found)


def test_the_rules_are_actually_applied() -> None:
    """Every model-loading call the product makes is seen by the check: with local_files_only flipped in the
    sources, each one is flagged."""
    files = {f.relative_to(ROOT): f.read_text(encoding="utf-8") for f in product_files()}
    calls = sum(1 for src in files.values() for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Call)
                and _name(n.func).rpartition(".")[2] in ("from_pretrained", "SentenceTransformer"))
    assert calls >= 7  # the site's LLM and LoRA evaluator, the coordinator's agent, GGUF conversion, MiniLM
    flipped = {p: s.replace("local_files_only=True", "local_files_only=False") for p, s in files.items()}
    flagged = [x for p, s in flipped.items() for x in problems_in(s, p) if "local_files_only" in x]
    assert len(flagged) == calls, flagged


@pytest.mark.parametrize(("snippet", "what"), [
    ("AutoModelForCausalLM.from_pretrained(p, local_files_only=True, trust_remote_code=True, use_safetensors=True)",
     "trust_remote_code"),
    ("AutoModelForCausalLM.from_pretrained(p, local_files_only=True, trust_remote_code=False)", "use_safetensors"),
    ("AutoTokenizer.from_pretrained(p, trust_remote_code=False)", "local_files_only"),
    ("AutoModel.from_pretrained(p, **kw)", "**kwargs"),
    ("SentenceTransformer(p)", "SentenceTransformer"),
    ("torch.load(f)", "torch.load"),
    ("torch.load(f, weights_only=False)", "torch.load"),
    ("pickle.load(f)", "unpickling"),
    ("pickle.loads(b)", "unpickling"),
    ("joblib.load(f)", "unpickling"),
    ("np.load(f)", "allow_pickle"),
    ("numpy.load(f, allow_pickle=True)", "allow_pickle"),
    ("pd.read_pickle(f)", "read_pickle"),
    ("yaml.load(s)", "yaml.load"),
    ("hf_hub_download('org/model', 'x.bin')", "hub"),
    ("class U(pickle.Unpickler):\n    pass", "unpickler"),
])
def test_the_check_catches_each_kind_of_breach(snippet: str, what: str) -> None:
    found = problems_in(snippet, Path("x.py"))
    assert found and what in found[0], found


def test_the_check_accepts_safe_loading() -> None:
    ok = "\n".join([
        "AutoTokenizer.from_pretrained(p, local_files_only=True, trust_remote_code=False)",
        "AutoModelForCausalLM.from_pretrained(p, local_files_only=True, trust_remote_code=False, use_safetensors=True)",
        "AutoModelForCausalLM.from_pretrained(p, gguf_file=g, local_files_only=True, trust_remote_code=False)",
        "torch.load(f, weights_only=True)",
        "np.load(f, allow_pickle=False)",
        "yaml.load(s, Loader=yaml.SafeLoader)",
    ])
    assert problems_in(ok, Path("x.py")) == []


# ---------------------------------------------------------------------------------------------- runtime


class _Trap:
    """Unpickling this creates a file: proof that a pickle was loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def _pickle_weights(folder: Path, marker: Path) -> None:
    import torch

    torch.save({"model.embed_tokens.weight": _Trap(marker)}, folder / "pytorch_model.bin")
    with (folder / "pytorch_model.bin").open("rb") as f:  # the trap is live: torch.load without weights_only
        torch.load(f, weights_only=False)
    assert marker.exists()
    marker.unlink()


def test_a_folder_with_pickle_weights_only_is_refused(tmp_path: Path) -> None:
    from site_agent.llm.errors import LLMConfigError
    from site_agent.llm.local_hf import LocalHF

    folder, marker = tmp_path / "model", tmp_path / "PWNED"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    _pickle_weights(folder, marker)
    with pytest.raises(LLMConfigError, match="only safetensors"):
        LocalHF(folder)
    assert not marker.exists()


@pytest.mark.slow
def test_traps_beside_real_weights_never_fire(tmp_path: Path) -> None:
    """The bundled SmolLM2's safetensors, plus a pickle that would run code and a config that names custom
    modelling code which would run on import: the model loads and answers, and neither trap fires."""
    import torch

    from protos.bundled_models import smollm2_folder
    from site_agent.llm.local_hf import LocalHF

    torch.set_num_threads(1)
    real = smollm2_folder()
    folder, marker = tmp_path / "model", tmp_path / "PWNED"
    folder.mkdir()
    for f in real.iterdir():
        if f.is_file():
            (folder / f.name).symlink_to(f)
    (folder / "config.json").unlink()
    config = json.loads((real / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    _pickle_weights(folder, marker)

    llm = LocalHF(folder, threads=1)
    (reply,) = llm.chat(["Say yes."], max_new_tokens=2)
    assert isinstance(reply, str)
    assert not marker.exists(), "code from the model folder ran"


def test_pickle_is_refused_by_the_restricted_unpickler(tmp_path: Path) -> None:
    """The one pickle reader in the product builds plain data and refuses any reference to a callable."""
    from site_agent.data.benchmark.cmekg import restricted_loads
    from site_agent.errors import DataError

    marker = tmp_path / "PWNED"
    assert restricted_loads(pickle.dumps({"a": [1, 2.0, "x"]})) == {"a": [1, 2.0, "x"]}
    with pytest.raises(DataError, match="pickle refused"):
        restricted_loads(pickle.dumps(_Trap(marker)))
    assert not marker.exists()
