"""Chinese question/answer pairs from the knowledge-graph triples.

Two steps, so that a build only phrases the pairs it keeps: :func:`extract_facts` finds, for every
subject, each predicate group of :data:`TEMPLATES` it has (one fact per subject and group, from the
first predicate of the group it has), with its coarse department and subject kind; :func:`render_fact`
then phrases one fact with a seeded rng (question and answer wording, and which items of a long list
are kept, ending in 等). :func:`generate_qa_pairs` does both for the whole graph (about 125k pairs).
Subjects are visited in sorted order, so the output depends only on the graph and the seed.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass

from site_agent.data.benchmark.departments import assign_departments
from site_agent.data.benchmark.templates import TEMPLATES, UNKNOWN_VALUES

__all__ = ["MAX_ITEMS", "Fact", "QAPair", "extract_facts", "generate_qa_pairs", "render_fact"]

MAX_ITEMS = 8
_TRIM = " \t\r\n。；;，,、"


@dataclass(frozen=True)
class Fact:
    """A subject's objects for one predicate group, before any phrasing."""

    subject: str
    predicate: str
    template: int  # index into TEMPLATES
    objects: tuple[str, ...]
    department: str
    subject_kind: str


@dataclass(frozen=True)
class QAPair:
    """One clean pair and where it came from (the metadata never leaves the builder as text)."""

    instruction: str
    answer: str
    subject: str
    predicate: str
    department: str
    subject_kind: str


# predicate -> (template index, rank within its group): a subject's own predicates are looked up here
# rather than every template scanning every subject.
_GROUP_OF: dict[str, tuple[int, int]] = {p: (i, rank) for i, t in enumerate(TEMPLATES)
                                         for rank, p in enumerate(t.predicates)}


def _clean_items(objects: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    return tuple(i for i in dict.fromkeys(o.strip(_TRIM) for o in objects) if i)


def extract_facts(graph: Mapping[str, Mapping[str, list[str]]]) -> list[Fact]:
    """Every (subject, predicate group) of ``graph`` a template can phrase, in sorted subject order."""
    meta = assign_departments(graph)
    facts: list[Fact] = []
    for subject in sorted(graph):
        props = graph[subject]
        kind, department = meta[subject]
        best: dict[int, tuple[int, str]] = {}
        for predicate in props:
            hit = _GROUP_OF.get(predicate)
            if hit is not None and kind in TEMPLATES[hit[0]].kinds and hit[1] < best.get(hit[0], (99, ""))[0]:
                best[hit[0]] = (hit[1], predicate)
        for index in sorted(best):
            predicate = best[index][1]
            if items := _clean_items(props[predicate]):
                facts.append(Fact(subject, predicate, index, items, department, kind))
    return facts


def render_fact(fact: Fact, rng: random.Random, max_items: int = MAX_ITEMS) -> QAPair:
    """Phrase ``fact`` as a question and an answer, wording chosen by ``rng``."""
    template, s = TEMPLATES[fact.template], fact.subject
    question = rng.choice(template.questions).format(s=s)
    answer = None
    if len(fact.objects) == 1:
        answer = next((a.format(s=s) for v, a in template.value_answers if v == fact.objects[0]), None)
    if answer is None:
        known = [i for i in fact.objects if i not in UNKNOWN_VALUES]
        if not known:
            answer = template.unknown.format(s=s)
        else:
            pattern = rng.choice(template.answers)
            more = len(known) > max_items
            if more:
                known = [known[k] for k in sorted(rng.sample(range(len(known)), max_items))]
            joined = template.sep.join(known) + ("等" if more and "{x}等" not in pattern else "")
            answer = pattern.format(s=s, x=joined)
    return QAPair(question, answer, s, fact.predicate, fact.department, fact.subject_kind)


def generate_qa_pairs(graph: Mapping[str, Mapping[str, list[str]]], *, seed: int,
                      max_items: int = MAX_ITEMS) -> list[QAPair]:
    """Every pair the templates can make from ``graph``, deterministic for ``seed``."""
    rng = random.Random(f"cmekg-qa:{seed}")
    return [render_fact(f, rng, max_items) for f in extract_facts(graph)]
