"""Loading the PyCMeKG knowledge graph (subject -> predicate -> objects) safely.

The graph ships as a pickle inside the ``pycmekg`` package. Unpickling can run arbitrary code, so the
file is read with :class:`RestrictedUnpickler`, which refuses every global reference: only plain
containers, numbers and strings can be built, and a pickle that names any callable or class fails.
The package itself is only *located* (``importlib.util.find_spec`` does not execute it); its
``knowledgeGraph`` module, which calls the unrestricted ``pickle.load``, is never imported.

The loaded object is then checked against the expected shape ``dict[str, dict[str, list[str]]]``;
malformed subjects, predicates and objects are skipped and counted rather than failing the whole load.
"""

from __future__ import annotations

import importlib.util
import io
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path

from site_agent.errors import DataError

__all__ = [
    "KnowledgeGraph",
    "LoadStats",
    "RestrictedUnpickler",
    "cmekg_path",
    "load_cmekg",
    "load_cmekg_with_stats",
    "restricted_loads",
    "validate_graph",
]

log = logging.getLogger(__name__)

KnowledgeGraph = dict[str, dict[str, list[str]]]
_PACKAGE = "pyCMeKG"


class _Refused(pickle.UnpicklingError):
    """A global or persistent reference: told apart from a merely corrupt file."""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds plain data only: every global (class, function) reference is refused."""

    def find_class(self, module: str, name: str) -> object:
        # GLOBAL/STACK_GLOBAL/INST/OBJ/EXT* and therefore REDUCE/BUILD all need a callable from here.
        raise _Refused("global references are not allowed in this pickle")

    def persistent_load(self, pid: object) -> object:
        raise _Refused("persistent references are not allowed in this pickle")


def restricted_loads(data: bytes) -> object:
    """Unpickle ``data`` allowing only plain containers and scalars; DataError on anything else."""
    try:
        return RestrictedUnpickler(io.BytesIO(data)).load()
    except _Refused:
        raise DataError("pickle refused: it references a class or callable (only plain data is allowed)") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError,
            MemoryError) as e:
        raise DataError(f"pickle could not be read ({type(e).__name__})") from None


@dataclass(frozen=True)
class LoadStats:
    """What validation kept and skipped: counts only."""

    subjects: int
    skipped_subjects: int
    skipped_predicates: int
    skipped_objects: int


def validate_graph(obj: object) -> tuple[KnowledgeGraph, LoadStats]:
    """Keep the parts of ``obj`` shaped ``dict[str, dict[str, list[str]]]``; count what was dropped."""
    if not isinstance(obj, dict):
        raise DataError("knowledge graph must be a mapping of subjects to predicates")
    graph: KnowledgeGraph = {}
    bad_subjects = bad_predicates = bad_objects = 0
    for subject, props in obj.items():
        if not isinstance(subject, str) or not subject.strip() or not isinstance(props, dict):
            bad_subjects += 1
            continue
        clean: dict[str, list[str]] = {}
        for predicate, objects in props.items():
            if not isinstance(predicate, str) or not isinstance(objects, list):
                bad_predicates += 1
                continue
            kept = [o.strip() for o in objects if isinstance(o, str) and o.strip()]
            bad_objects += len(objects) - len(kept)
            if kept:
                clean[predicate.strip()] = kept
            else:
                bad_predicates += 1
        if clean:
            graph[subject.strip()] = clean
        else:
            bad_subjects += 1
    if not graph:
        raise DataError("knowledge graph holds no usable subjects")
    return graph, LoadStats(len(graph), bad_subjects, bad_predicates, bad_objects)


def cmekg_path() -> Path:
    """Where the installed package keeps ``model/cmekg.pkl``; DataError when the package is missing."""
    spec = importlib.util.find_spec(_PACKAGE)  # locates the package without running its __init__
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / "model" / "cmekg.pkl"
        if path.is_file():
            return path
    if spec is None:
        raise DataError("the pycmekg package is not installed (pip install pycmekg==0.2.5)")
    raise DataError("the pycmekg package has no model/cmekg.pkl (reinstall pycmekg==0.2.5)")


def load_cmekg_with_stats(path: Path | None = None) -> tuple[KnowledgeGraph, LoadStats]:
    """Load and validate the graph (from the installed package unless ``path`` is given)."""
    path = cmekg_path() if path is None else Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"knowledge graph file could not be read ({type(e).__name__})") from None
    graph, stats = validate_graph(restricted_loads(data))
    log.info("knowledge graph: %d subjects kept, %d subjects, %d predicates, %d objects skipped",
             stats.subjects, stats.skipped_subjects, stats.skipped_predicates, stats.skipped_objects)
    return graph, stats


def load_cmekg() -> KnowledgeGraph:
    """The PyCMeKG graph as ``{subject: {predicate: [object, ...]}}`` (about 27k subjects, ~2 s)."""
    return load_cmekg_with_stats()[0]
