"""The "concept-graph" mode (MathScale-style): new questions from a graph of math concepts.

Three steps, each a function here:

1. ``extract``: the teacher names the topics (broad areas) and knowledge points (specific facts,
   formulas, skills) of each seed question; the reply is parsed leniently into a ``ConceptRecord``,
   and a reply that cannot be read is recorded in ``error``, never raised.
2. ``build_graph``: topics and knowledge points become nodes; two nodes that the same seed names
   get an edge whose weight counts such seeds (topic–topic, topic–knowledge point and
   knowledge point–knowledge point edges).  ``ConceptGraph.sample`` walks it: a topic drawn by
   frequency, a walk over topic–topic edges, then knowledge points reached from those topics, then a
   walk over knowledge point–knowledge point edges.  ``walk_seeds`` turns walks into pseudo-seeds.
3. ``generate``: the teacher writes a new question from a walk's concepts and solves it
   ``config.samples`` times; the reference answer is unknown, so the question is kept only when the
   answers agree (self-consistency, grouped by grader equivalence), and its agreeing traces become
   records with the majority answer.

The graph is a few dictionaries of counters written by hand: it needs weighted co-occurrence counts
and a weighted random walk and nothing else (no paths, no layouts, no algorithms), a few thousand
nodes at most, and its walk must be reproducible from a ``random.Random`` — a graph library would
add a dependency and hide the one thing that matters here, the order in which choices are drawn.
"""

from __future__ import annotations

import itertools
import json
import random
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from benchmarks.records import Problem
from runtime.trace import Trace
from training.generate.context import GenContext
from training.generate.keep import Keeper, sample_failure, teacher_label
from training.generate.records import GenRecord, SeedOutcome
from training.generate.rephrase import clean_question, solves

MODE = "concept-graph"
DATASET = "concept-graph"
SPLIT = "synthetic"

MAX_ITEM_CHARS = 80
MAX_TOPICS = 8
MAX_KNOWLEDGE_POINTS = 12

EXTRACT_SYSTEM = "You are a mathematics teacher who classifies problems by what they teach."
EXTRACT_INSTRUCTION = (
    "Which mathematics does the problem below use?\n\n"
    "Problem:\n{question}\n\n"
    "Answer in exactly two lines and nothing else:\n"
    "Topics: <one to three broad areas of mathematics, separated by semicolons>\n"
    "Knowledge points: <two to five specific facts, formulas or skills the solution needs, "
    "separated by semicolons>"
)
WRITE_SYSTEM = "You are a mathematics teacher who writes new exercises."
WRITE_INSTRUCTION = (
    "Write one new math problem for a student that draws on these ideas.\n\n"
    "Topics: {topics}\n"
    "Knowledge points: {knowledge_points}\n\n"
    "The problem must state every number it needs, ask one question, and have one exact answer "
    "(a number or a short expression). Reply with the problem only: no solution, no answer, no title."
)

# A header line of the extraction reply: "Topics: a; b", "**Knowledge points**: c", "## Topics".
_HEADER = re.compile(
    r"^[\s#>*_-]*(topics?|main topics?|knowledge[\s_-]*points?|key knowledge points?|skills?)"
    r"[\s*_]*(?::|-|$)(.*)$",
    re.IGNORECASE,
)
_BULLET = re.compile(r"^\s*(?:(?:[-*•+]|\d+[.)])\s+)+")
_JSON_OBJECT = re.compile(r"\{.*\}", re.DOTALL)
_PLACEHOLDER = re.compile(r"^<.*>$|^(?:none|n/?a|null|unknown|\.\.\.)$")
_ASKS = re.compile(
    r"\?|\b(?:find|compute|calculate|determine|evaluate|solve|simplify|express|what|how\s+(?:many|much|long|far|old))\b",
    re.IGNORECASE,
)


class ConceptRecord(BaseModel):
    """The concepts the teacher named for one seed question."""

    id: str
    topics: list[str]
    knowledge_points: list[str]
    raw: str
    error: str | None = None


# ------------------------------------------------------------------------------------- extraction


def _clean_item(item: str) -> str | None:
    item = _BULLET.sub("", item)
    item = " ".join(item.split()).strip(" .;:,'\"`*_").casefold()
    if not item or len(item) > MAX_ITEM_CHARS or _PLACEHOLDER.match(item):
        return None
    return item


def _clean_items(items: Iterable[str], limit: int) -> list[str]:
    out: list[str] = []
    for raw in items:
        item = _clean_item(raw)
        if item is not None and item not in out:
            out.append(item)
    return out[:limit]


def _split(text: str) -> list[str]:
    # Semicolons are what the prompt asks for; a reply with none most likely used commas.
    return text.split(";") if ";" in text else text.split(",")


def _section(name: str) -> str:
    return "topics" if name.casefold().lstrip().startswith(("topic", "main")) else "knowledge_points"


def _from_json(raw: str) -> dict[str, list[str]] | None:
    match = _JSON_OBJECT.search(raw)
    if match is None:
        return None
    try:
        data = json.loads(match.group(0))
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    found: dict[str, list[str]] = {"topics": [], "knowledge_points": []}
    for key, value in data.items():
        if not isinstance(key, str) or not re.match(r"\s*(topic|main|knowledge|skill)", key, re.IGNORECASE):
            continue
        values = value if isinstance(value, list) else _split(value) if isinstance(value, str) else []
        found[_section(key)].extend(str(v) for v in values)
    return found


def _from_lines(raw: str) -> dict[str, list[str]]:
    """Header lines start a section; items follow the colon or come as bullet lines below it."""
    found: dict[str, list[str]] = {"topics": [], "knowledge_points": []}
    current: str | None = None
    for line in raw.splitlines():
        header = _HEADER.match(line)
        if header is not None:
            current = _section(header.group(1))
            found[current].extend(_split(header.group(2)))
        elif current is not None and _BULLET.match(line):
            found[current].append(line)
        elif line.strip():
            current = None  # prose after a list ends it
    return found


def parse_concepts(seed_id: str, raw: str) -> ConceptRecord:
    """The teacher's reply as a ``ConceptRecord``: lines ("Topics: a; b"), bullet lists or JSON;
    items lower-cased, whitespace-collapsed, deduplicated; empty, placeholder and over-long items
    dropped.  What is missing is said in ``error``."""
    found = _from_json(raw)
    if found is None or not any(found.values()):
        found = _from_lines(raw)  # no JSON, or an object without the keys: read the lines
    topics = _clean_items(found["topics"], MAX_TOPICS)
    points = _clean_items(found["knowledge_points"], MAX_KNOWLEDGE_POINTS)
    missing = [name for name, items in (("topics", topics), ("knowledge points", points)) if not items]
    error = None
    if not raw.strip():
        error = "empty reply"
    elif missing:
        error = f"no {' and no '.join(missing)} in the reply"
    return ConceptRecord(id=seed_id, topics=topics, knowledge_points=points, raw=raw, error=error)


async def extract(seed: Problem, ctx: GenContext) -> ConceptRecord:
    """The teacher's topics and knowledge points for ``seed`` (a teacher failure propagates: the seed
    is unfinished, not unreadable)."""
    messages = [
        {"role": "system", "content": EXTRACT_SYSTEM},
        {"role": "user", "content": EXTRACT_INSTRUCTION.format(question=seed.question)},
    ]
    max_tokens = min(ctx.config.max_tokens, int(ctx.config.options.get("extract_max_tokens", 128)))
    raw = await ctx.complete(messages, max_tokens=max_tokens, key=(seed.id, "concepts"))
    return parse_concepts(seed.id, raw)


# ------------------------------------------------------------------------------------------ graph


def _bump(edges: dict[str, Counter[str]], a: str, b: str) -> None:
    edges.setdefault(a, Counter())[b] += 1


def _choose(rng: random.Random, weights: dict[str, int], exclude: Iterable[str] = ()) -> str | None:
    """A key drawn with probability proportional to its weight; keys sorted so the draw depends only
    on the counts, not on the order the seeds were read in."""
    skip = set(exclude)
    keys = sorted(k for k, w in weights.items() if w > 0 and k not in skip)
    if not keys:
        return None
    return rng.choices(keys, weights=[weights[k] for k in keys])[0]


@dataclass
class ConceptGraph:
    """Topic and knowledge-point nodes (counted in seeds) and their co-occurrence edges (counted in
    seeds naming both ends).  Topics and knowledge points are separate name spaces."""

    topics: Counter[str] = field(default_factory=Counter)
    knowledge_points: Counter[str] = field(default_factory=Counter)
    topic_topic: dict[str, Counter[str]] = field(default_factory=dict)  # symmetric
    topic_kp: dict[str, Counter[str]] = field(default_factory=dict)  # topic -> knowledge point
    kp_kp: dict[str, Counter[str]] = field(default_factory=dict)  # symmetric
    seeds: int = 0

    def add(self, topics: Sequence[str], points: Sequence[str]) -> None:
        """Count one seed's concepts (each name once per seed)."""
        topics, points = list(dict.fromkeys(topics)), list(dict.fromkeys(points))
        self.seeds += 1
        self.topics.update(topics)
        self.knowledge_points.update(points)
        for a, b in itertools.combinations(topics, 2):
            _bump(self.topic_topic, a, b)
            _bump(self.topic_topic, b, a)
        for t, k in itertools.product(topics, points):
            _bump(self.topic_kp, t, k)
        for a, b in itertools.combinations(points, 2):
            _bump(self.kp_kp, a, b)
            _bump(self.kp_kp, b, a)

    def stats(self) -> dict[str, int]:
        """Node and (undirected) edge counts, for the data set card."""
        return {
            "seeds": self.seeds,
            "topics": len(self.topics),
            "knowledge_points": len(self.knowledge_points),
            "topic_topic_edges": sum(map(len, self.topic_topic.values())) // 2,
            "topic_kp_edges": sum(map(len, self.topic_kp.values())),
            "kp_kp_edges": sum(map(len, self.kp_kp.values())) // 2,
        }

    def sample(self, rng: random.Random, n_topics: int, n_kps: int) -> tuple[list[str], list[str]]:
        """Up to ``n_topics`` topics and ``n_kps`` knowledge points that belong together.

        Start at a topic drawn by frequency; step to an unvisited neighbour of the current topic by
        edge weight, or, at a dead end, of any topic visited so far.  Then draw a first knowledge
        point by its summed weight to the chosen topics and walk knowledge point–knowledge point
        edges the same way, falling back to the topics' other knowledge points at a dead end.  A
        walk never jumps to an unconnected concept (a question mixing unrelated ideas is worse than
        a question with fewer), so on a small or disconnected graph it returns fewer than asked.
        """
        topics: list[str] = []
        first = _choose(rng, dict(self.topics))
        if first is not None:
            topics.append(first)
        while topics and len(topics) < n_topics:
            step = _choose(rng, self.topic_topic.get(topics[-1], {}), topics)
            if step is None:
                step = _choose(rng, _merge(self.topic_topic.get(t, {}) for t in topics), topics)
            if step is None:
                break
            topics.append(step)
        linked = _merge(self.topic_kp.get(t, {}) for t in topics)
        points: list[str] = []
        while len(points) < n_kps:
            step = _choose(rng, self.kp_kp.get(points[-1], {}), points) if points else None
            if step is None:
                step = _choose(rng, linked, points)
            if step is None:
                break
            points.append(step)
        return topics, points


def _merge(counters: Iterable[dict[str, int]]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for counter in counters:
        total.update(counter)
    return dict(total)


def build_graph(records: Sequence[ConceptRecord]) -> ConceptGraph:
    """The co-occurrence graph of the concepts named per seed.  A record with an ``error`` still
    adds whatever it did name (a reply with topics but no knowledge points still links its topics)."""
    graph = ConceptGraph()
    for record in records:
        if record.topics or record.knowledge_points:
            graph.add(record.topics, record.knowledge_points)
    return graph


def walk_seeds(graph: ConceptGraph, count: int, ctx: GenContext) -> list[Problem]:
    """``count`` walks as pseudo-seed problems (``walk-<i>``; the concepts in ``meta``); walk i
    depends only on the run seed and i.  Walk sizes: options ``walk_topics`` (2), ``walk_kps`` (3)."""
    if not graph.topics:
        raise ValueError(
            "the concept graph has no topics: every extraction failed (see the concept records' "
            "errors); try a stronger teacher (--backend/--model) or more --max-tokens"
        )
    n_topics = int(ctx.config.options.get("walk_topics", 2))
    n_kps = int(ctx.config.options.get("walk_kps", 3))
    walks: list[Problem] = []
    for i in range(count):
        topics, points = graph.sample(ctx.rng("walk", i), n_topics, n_kps)
        meta = {"topics": topics, "knowledge_points": points}
        walks.append(Problem(id=f"walk-{i}", question="", answer="", dataset=DATASET, split=SPLIT, meta=meta))
    return walks


# ------------------------------------------------------------------------------------ generation


def check_question(question: str, ctx: GenContext) -> tuple[str, str] | None:
    """Why a written question is unusable — ``(reason, detail)`` — or None.  Bounds: options
    ``min_question_chars`` (30), ``max_question_chars`` (1500)."""
    low = int(ctx.config.options.get("min_question_chars", 30))
    high = int(ctx.config.options.get("max_question_chars", 1500))
    if not question:
        return "empty", ""
    if len(question) < low:
        return "too short", question
    if len(question) > high:
        return "too long", f"{len(question)} chars: {question[:200]}"
    if solves(question):
        return "contains a solution", question[:300]
    if not _ASKS.search(question):
        return "not a question", question[:300]
    return None


async def _group(answers: Sequence[str | None], ctx: GenContext) -> list[list[int]]:
    """Sample indices grouped by grader equivalence, each answer compared with one representative
    per group, groups in order of first appearance — ``runtime.consistency.majority_vote``'s rule,
    keeping the members (a ``Vote`` only has the counts)."""
    groups: list[list[int]] = []
    for i, answer in enumerate(answers):
        if answer is None:
            continue
        for group in groups:
            representative = answers[group[0]]
            assert representative is not None
            if await ctx.equal(answer, representative):
                group.append(i)
                break
        else:
            groups.append([i])
    return groups


async def generate(walk: Problem, ctx: GenContext) -> SeedOutcome:
    """Write a question from ``walk``'s concepts and keep it with its self-consistent traces."""
    cfg = ctx.config
    topics: list[str] = list(walk.meta.get("topics", []))
    points: list[str] = list(walk.meta.get("knowledge_points", []))
    keeper = Keeper(walk.id, MODE, cfg.keep_per_seed)
    if not topics:
        keeper.reject("empty walk", json.dumps(walk.meta))
        return keeper.outcome()
    messages = [
        {"role": "system", "content": WRITE_SYSTEM},
        {
            "role": "user",
            "content": WRITE_INSTRUCTION.format(
                topics="; ".join(topics), knowledge_points="; ".join(points) or "(any that fit)"
            ),
        },
    ]
    max_tokens = min(cfg.max_tokens, int(cfg.options.get("question_max_tokens", 384)))
    question = clean_question(await ctx.complete(messages, max_tokens=max_tokens, key=(walk.id, "question")))
    why = check_question(question, ctx)
    if why is not None:
        keeper.reject(*why)
        return keeper.outcome()

    problem = Problem(id=walk.id, question=question, answer="", dataset=DATASET, split=SPLIT, meta=walk.meta)
    samples = await ctx.sample_traces(problem)
    usable = [sample_failure(s) is None for s in samples]
    answers = [s.answer if ok else None for s, ok in zip(samples, usable, strict=True)]
    groups = await _group(answers, ctx)
    k = len(samples)
    votes = [(answers[g[0]], len(g)) for g in groups]
    winner = max(groups, key=lambda g: (len(g), -g[0])) if groups else []
    m = len(winner)
    min_agreement = float(cfg.options.get("min_agreement", 0.5))
    if not winner or m / k < min_agreement or (k >= 2 and m < 2):
        failures = [f for f in map(sample_failure, samples) if f is not None]
        detail = {"question": question, "votes": votes, "k": k, "failures": failures}
        keeper.reject("no agreement", json.dumps(detail))
        return keeper.outcome()

    majority = answers[winner[0]]
    assert majority is not None
    in_majority = set(winner)
    provenance: dict[str, Any] = {
        "topics": topics,
        "knowledge_points": points,
        "agreement": m / k,
        "teacher": teacher_label(ctx),
        "temperature": cfg.temperature,
        "run_seed": cfg.seed,
    }
    for j, sample in enumerate(samples):
        label = f"{walk.id}#{j}"
        minority = (
            None
            if j in in_majority
            else ("minority answer", f"{label}: {sample.answer!r} vs majority {majority!r}")
        )

        def record(trace: Trace, j: int = j) -> GenRecord:
            return GenRecord(
                id=f"{walk.id}/{j}",
                seed_id=walk.id,
                mode=MODE,
                question=question,
                answer=majority,
                trace=trace,
                provenance={**provenance, "sample": j},
            )

        keeper.offer(label, sample, minority, record)
    return keeper.outcome()
