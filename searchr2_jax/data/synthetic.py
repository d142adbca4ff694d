"""A deterministic synthetic multi-hop world: fictional entities, a passage corpus and 1-3 hop questions.

Names are built from syllables, so no pretrained model can know an answer: only search finds it. Every entity has
one passage (Search-R1 corpus format `{"id", "contents": "\"Title\"\ntext"}`); people come in look-alike pairs (each
first name and each surname is shared by two people, and `distractor` entities never asked about add more
namesakes), so a sloppy query retrieves the wrong person. Each question carries its gold supporting passage ids and
the scripted query of each hop (in `QAExample.metadata`), used by the demonstrations and the retrieval test.

Splits are by *region*: the world is three disjoint neighbourhoods (train, dev, test), each with its own countries,
cities, universities, companies and people. Every relation and every namesake stays inside its region, so no fact a
dev or test question needs is stated in a training question, its passages or a demonstration built from them: a
held-out question can only be answered by searching. A fact is stated once: a person's passage does not list the
companies they founded (that would let "the founder of X" and the founder's birthplace come from one search).

Default size (`WorldConfig()`): about 2k entities and 10k questions, generated in about a second.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
from typing import Any, Callable

from searchr2_jax.data.qa import QAExample

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "th", "dr", "kr", "sk", "st", "br")
_VOWELS = ("a", "e", "i", "o", "u", "ae", "ou", "y")
_CODAS = ("", "", "", "n", "r", "l", "s", "th", "k", "m", "x", "sh")
_COMPANY_SUFFIXES = ("Works", "Holdings", "Labs", "Foundry", "Trading", "Mills")
_OCCUPATIONS = ("sculptor", "engineer", "botanist", "cartographer", "composer", "surgeon", "archivist", "pilot")
_INDUSTRIES = ("shipbuilding", "textile", "glassware", "software", "mining", "publishing", "brewing", "optics")
_FEATURES = ("river harbor", "old bridges", "salt markets", "clock tower", "glass domes", "terraced gardens")

# (template id, subject kind, relation chain, question text, one query keyword per hop)
TEMPLATES: tuple[tuple[str, str, tuple[str, ...], str, tuple[str, ...]], ...] = (
    ("person_city", "person", ("birth_city",), "In which city was {s} born?", ("born",)),
    ("person_company", "person", ("employer",), "Which company does {s} work for?", ("employer",)),
    ("person_university", "person", ("university",), "Which university did {s} attend?", ("university",)),
    ("person_year", "person", ("birth_year",), "In what year was {s} born?", ("born",)),
    ("company_founder", "company", ("founder",), "Who founded {s}?", ("founder",)),
    ("company_hq", "company", ("headquarters",), "In which city is {s} headquartered?", ("headquarters",)),
    ("city_country", "city", ("country",), "In which country is {s} located?", ("country",)),
    ("country_capital", "country", ("capital",), "What is the capital of {s}?", ("capital",)),
    ("country_language", "country", ("language",), "What language is spoken in {s}?", ("language",)),
    ("person_country", "person", ("birth_city", "country"), "In which country was {s} born?", ("born", "country")),
    ("person_employer_founder", "person", ("employer", "founder"),
     "Who founded the company that {s} works for?", ("employer", "founder")),
    ("person_employer_hq", "person", ("employer", "headquarters"),
     "In which city is the company that {s} works for headquartered?", ("employer", "headquarters")),
    ("person_university_city", "person", ("university", "city"),
     "In which city is the university that {s} attended?", ("university", "city")),
    ("company_founder_city", "company", ("founder", "birth_city"),
     "In which city was the founder of {s} born?", ("founder", "born")),
    ("person_capital", "person", ("birth_city", "country", "capital"),
     "What is the capital of the country where {s} was born?", ("born", "country", "capital")),
    ("person_employer_country", "person", ("employer", "headquarters", "country"),
     "In which country is the company that {s} works for headquartered?", ("employer", "headquarters", "country")),
    ("person_employer_founder_city", "person", ("employer", "founder", "birth_city"),
     "In which city was the founder of the company that {s} works for born?", ("employer", "founder", "born")),
    ("company_founder_country", "company", ("founder", "birth_city", "country"),
     "In which country was the founder of {s} born?", ("founder", "born", "country")),
    ("person_language", "person", ("birth_city", "country", "language"),
     "What language is spoken in the country where {s} was born?", ("born", "country", "language")),
)


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    seed: int = 0
    num_people: int = 1200
    num_companies: int = 300
    num_cities: int = 300
    num_countries: int = 40
    num_universities: int = 80
    num_distractors: int = 100  # extra namesake people, never a question subject nor an answer
    num_questions: int = 10_000
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train/dev/test regions: share of each kind

    @classmethod
    def tiny(cls, seed: int = 0, num_questions: int = 600) -> "WorldConfig":
        """About 200 entities: for tests and CPU smoke runs."""
        return cls(seed=seed, num_people=120, num_companies=30, num_cities=30, num_countries=6, num_universities=8,
                   num_distractors=10, num_questions=num_questions)


@dataclasses.dataclass
class Entity:
    id: int
    kind: str
    name: str
    attrs: dict[str, Any]
    distractor: bool = False
    split: str = "train"  # the region it belongs to (every entity it links to is in the same one)


@dataclasses.dataclass
class World:
    config: WorldConfig
    entities: list[Entity]
    passages: list[dict[str, str]]  # index == entity id
    questions: list[QAExample]
    splits: dict[str, list[QAExample]]

    def entity(self, eid: int) -> Entity:
        return self.entities[eid]

    def corpus(self, split: str | None = None) -> list[dict[str, str]]:
        """Every passage, or only those of one region (training retrieval searches the training region only)."""
        if split is None:
            return list(self.passages)
        return [p for p, e in zip(self.passages, self.entities) if e.split == split]

    def lookalikes(self, eid: int) -> list[int]:
        """Entities of the same kind that share a name part with `eid` (first name or surname; company stem)."""
        e = self.entities[eid]
        key = _name_key(e)
        return [x.id for x in self.entities if x.id != eid and x.kind == e.kind and key & _name_key(x)]

    def name_words(self) -> set[str]:
        """Every word of an entity's name, and every language: what no region shares with another. The common
        words of names (company suffixes, "University") are left out."""
        common = {"University", *_COMPANY_SUFFIXES}
        words = {w for e in self.entities for w in e.name.split() if w not in common}
        return words | {e.attrs["language"] for e in self.entities if e.kind == "country"}

    def hop_query(self, eid: int, keyword: str) -> str:
        return f"{self.entities[eid].name} {keyword}"


def _name_key(e: Entity) -> set[str]:
    parts = e.name.split()
    if e.kind == "company":
        return {parts[0]}
    return set(parts) - {"University"}


def syllable_word(rng: random.Random, syllables: tuple[int, int] = (2, 3)) -> str:
    """One capitalized name of 4-12 letters built from the world's syllables (not necessarily new)."""
    while True:
        n = rng.randint(*syllables)
        w = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(n)).capitalize()
        if 4 <= len(w) <= 12:
            return w


_WORD_RE = re.compile(r"[A-Z][a-z]+")


class Renamer:
    """Respells the name words of a text (`names`, e.g. `World.name_words()`) as fresh syllable names; other words
    stay. Languages keep their "-ish". A fresh name is never one of `names`.

    consistent=True: one word maps to one fresh name for the renamer's life, and two words never to the same one, so
    a renamed demonstration keeps its facts and namesakes, about entities no region has. False: every occurrence is
    respelled anew (the world tokenizer's training text, which must not learn any name whole)."""

    def __init__(self, names: set[str], rng: random.Random, consistent: bool = True):
        self.names, self.rng, self.consistent = names, rng, consistent
        self.map: dict[str, str] = {}
        self.used: set[str] = set()

    def _fresh(self, word: str) -> str:
        while True:
            w = syllable_word(self.rng, (2, 2)) + "ish" if word.endswith("ish") else syllable_word(self.rng)
            if w not in self.names and w not in self.used:
                return w

    def word(self, word: str) -> str:
        if word not in self.names:
            return word
        if not self.consistent:
            return self._fresh(word)
        if word not in self.map:
            self.map[word] = self._fresh(word)
            self.used.add(self.map[word])
        return self.map[word]

    def __call__(self, text: str) -> str:
        return _WORD_RE.sub(lambda m: self.word(m.group(0)), text)


class _Names:
    """Unique syllable names; `word()` never returns the same string twice."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.used: set[str] = set()

    def word(self, syllables: tuple[int, int] = (2, 3)) -> str:
        for _ in range(10_000):
            w = syllable_word(self.rng, syllables)
            if w not in self.used:
                self.used.add(w)
                return w
        raise RuntimeError("name space exhausted; use fewer entities")


def _article(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def _passage_text(e: Entity, ents: list[Entity]) -> str:
    a, n = e.attrs, e.name
    name = lambda k: ents[a[k]].name  # noqa: E731
    if e.kind == "person":
        return (f"{n} (born {a['birth_year']}) is {_article(a['occupation'])} born in {name('birth_city')}. {n} studied at "
                f"{name('university')} and works for {name('employer')}.")
    if e.kind == "company":
        return (f"{n} is {_article(a['industry'])} company headquartered in {name('headquarters')}. {n} was founded by "
                f"{name('founder')}.")
    if e.kind == "city":
        return (f"{n} is a city in the country of {name('country')}, founded in {a['founded_year']}. {n} is known "
                f"for its {a['feature']}.")
    if e.kind == "country":
        return f"{n} is a country whose capital is {name('capital')}. The official language of {n} is {a['language']}."
    if e.kind == "university":
        return f"{n} is a university located in the city of {name('city')}."
    raise ValueError(f"unknown entity kind {e.kind!r}")


SPLITS = ("train", "dev", "test")
# The fewest of each kind a region needs: two countries (a country question has a wrong namesake-free answer to
# confuse), a capital per country, a university, a company stem pair, and people in namesake pairs.
_REGION_MIN = {"countries": 2, "cities": 2, "universities": 1, "companies": 2, "people": 4, "distractors": 0}


def _region_counts(cfg: WorldConfig) -> dict[str, dict[str, int]]:
    """How many entities of each kind each region gets: the split fractions, at least `_REGION_MIN`."""
    totals = dict(countries=cfg.num_countries, cities=cfg.num_cities, universities=cfg.num_universities,
                  companies=cfg.num_companies, people=cfg.num_people, distractors=cfg.num_distractors)
    out = {s: {} for s in SPLITS}
    for kind, n in totals.items():
        held = [max(_REGION_MIN[kind], round(n * f)) for f in cfg.split_fractions[1:]]
        sizes = [max(_REGION_MIN[kind], n - sum(held)), *held]
        for split, size in zip(SPLITS, sizes):
            out[split][kind] = size
    for split in SPLITS:
        out[split]["cities"] = max(out[split]["cities"], out[split]["countries"])
        # People come in namesake pairs: an odd count would leave one without a namesake, so add a distractor.
        out[split]["distractors"] += (out[split]["people"] + out[split]["distractors"]) % 2
    return out


def _build_region(split: str, counts: dict[str, int], names: _Names, suffixes: list[str], rng: random.Random,
                  ents: list[Entity]) -> None:
    """One region's entities, appended to `ents`; every link and every namesake stays inside the region."""

    def add(kind: str, name: str, distractor: bool = False) -> Entity:
        e = Entity(len(ents), kind, name, {}, distractor, split)
        ents.append(e)
        return e

    countries = [add("country", names.word()) for _ in range(counts["countries"])]
    cities = [add("city", names.word()) for _ in range(counts["cities"])]
    unis = [add("university", f"{names.word((2, 2))} University") for _ in range(counts["universities"])]
    stems = [names.word() for _ in range((counts["companies"] + 1) // 2)]  # two companies per stem: look-alikes
    companies = [add("company", f"{stems[i // 2]} {suffixes[i % 2]}") for i in range(counts["companies"])]
    # People: every first name and every surname is used twice, so each person has two namesakes.
    total = counts["people"] + counts["distractors"]
    firsts = [names.word((2, 2)) for _ in range((total + 1) // 2)] * 2
    lasts = [names.word() for _ in range((total + 1) // 2)] * 2
    rng.shuffle(lasts)
    while len({(f, last) for f, last in zip(firsts, lasts)}) < len(firsts):  # a repeated full name: pair again
        rng.shuffle(lasts)
    full = [f"{f} {last}" for f, last in zip(firsts, lasts)]
    people = [add("person", nm, distractor=i >= counts["people"]) for i, nm in enumerate(full[:total])]
    languages = [names.word((2, 2)) + "ish" for _ in countries]

    for i, c in enumerate(countries):
        c.attrs["language"] = languages[i]
    for i, c in enumerate(cities):
        c.attrs.update(country=countries[i % len(countries)].id, founded_year=rng.randint(1100, 1950),
                       feature=rng.choice(_FEATURES))
    for i, c in enumerate(countries):
        c.attrs["capital"] = cities[i].id  # city i lies in country i (i % n_countries == i)
    for u in unis:
        u.attrs["city"] = rng.choice(cities).id
    for p in people:
        p.attrs.update(birth_city=rng.choice(cities).id, employer=rng.choice(companies).id,
                       university=rng.choice(unis).id, birth_year=rng.randint(1900, 2000),
                       occupation=rng.choice(_OCCUPATIONS))
    real_people = [p for p in people if not p.distractor]
    for co in companies:
        co.attrs.update(industry=rng.choice(_INDUSTRIES), headquarters=rng.choice(cities).id,
                        founder=rng.choice(real_people).id)


def _build_entities(cfg: WorldConfig, rng: random.Random) -> list[Entity]:
    names = _Names(rng)
    suffixes = rng.sample(_COMPANY_SUFFIXES, 2)
    ents: list[Entity] = []
    for split, counts in _region_counts(cfg).items():
        _build_region(split, counts, names, suffixes, rng, ents)
    return ents


def _question(ents: list[Entity], tpl, subject: Entity, split: str) -> QAExample:
    tid, _, chain, text, keywords = tpl
    node, gold, queries, path = subject, [], [], [subject.id]
    answer = None
    for rel, kw in zip(chain, keywords):
        gold.append(str(node.id))
        queries.append(f"{node.name} {kw}")
        value = node.attrs[rel]
        if rel not in ("birth_year", "language"):  # the other relations point at an entity id
            node = ents[value]
            path.append(node.id)
            answer = node.name
        else:
            answer = str(value)
    meta = {"template": tid, "hops": len(chain), "subject_id": subject.id, "entity_path": path,
            "gold_passage_ids": gold, "hop_queries": queries, "split": split}
    return QAExample(id=f"syn-{tid}-{subject.id}", question=text.format(s=subject.name), golden_answers=(answer,),
                     data_source="synthetic", metadata=meta)


def generate_world(config: WorldConfig | None = None, **overrides) -> World:
    """Build the world for `config` (or `WorldConfig(**overrides)`); same config, same world, byte for byte."""
    cfg = dataclasses.replace(config or WorldConfig(), **overrides)
    rng = random.Random(cfg.seed)
    ents = _build_entities(cfg, rng)
    passages = [{"id": str(e.id), "contents": f'"{e.name}"\n{_passage_text(e, ents)}'} for e in ents]

    subjects = [e for e in ents if not e.distractor and e.kind in ("person", "company", "city", "country")]
    split_of = {e.id: e.split for e in subjects}

    by_hops: dict[int, list[QAExample]] = {1: [], 2: [], 3: []}
    for tpl in TEMPLATES:
        for e in subjects:
            if e.kind == tpl[1]:
                by_hops[len(tpl[2])].append(_question(ents, tpl, e, split_of[e.id]))
    questions: list[QAExample] = []
    for hops in (1, 2, 3):  # equal share of each hop count
        pool = by_hops[hops]
        want = min(len(pool), cfg.num_questions // 3 + (1 if hops <= cfg.num_questions % 3 else 0))
        questions.extend(rng.sample(pool, want))
    questions.sort(key=lambda q: (split_of[q.metadata["subject_id"]], q.metadata["hops"], q.id))
    splits: dict[str, list[QAExample]] = {"train": [], "dev": [], "test": []}
    for q in questions:
        splits[q.metadata["split"]].append(q)
    for name in splits:  # deterministic shuffled order inside each split
        rng.shuffle(splits[name])
    return World(cfg, ents, passages, questions, splits)


def hop_recall(world: World, retriever, k: int = 3, questions: list[QAExample] | None = None,
               batch_size: int = 512) -> float:
    """Share of hops whose scripted query (`hop_queries`) retrieves that hop's gold passage within the top k: how
    well a retriever serves the protocol the demonstrations teach."""
    pairs = [(q, str(pid)) for ex in (world.questions if questions is None else questions)
             for q, pid in zip(ex.metadata["hop_queries"], ex.metadata["gold_passage_ids"])]
    hits = 0
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        results = retriever.search([q for q, _ in chunk], k)
        hits += sum(gold in {p.id for p in found} for (_, gold), found in zip(chunk, results))
    return hits / max(len(pairs), 1)


def write_world(world: World, out_dir: str, write_jsonl: Callable | None = None) -> dict[str, str]:
    """Write `corpus.jsonl`, `{train,dev,test}.jsonl` (FlashRAG schema + metadata) and `world.json`; returns paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"corpus": os.path.join(out_dir, "corpus.jsonl")}
    with open(paths["corpus"], "w", encoding="utf-8") as f:
        for p in world.passages:
            f.write(json.dumps(p, ensure_ascii=False) + "\n")
    for split, qs in world.splits.items():
        paths[split] = os.path.join(out_dir, f"{split}.jsonl")
        with open(paths[split], "w", encoding="utf-8") as f:
            for q in qs:
                f.write(json.dumps(q.to_json(), ensure_ascii=False) + "\n")
    paths["world"] = os.path.join(out_dir, "world.json")
    with open(paths["world"], "w", encoding="utf-8") as f:
        json.dump({"config": dataclasses.asdict(world.config), "num_entities": len(world.entities),
                   "num_questions": len(world.questions)}, f, indent=1)
    return paths


def load_world_config(path: str) -> WorldConfig:
    """The `WorldConfig` saved in a `world.json`; `generate_world` on it rebuilds the same world."""
    with open(path, encoding="utf-8") as f:
        cfg = json.load(f)["config"]
    cfg["split_fractions"] = tuple(cfg["split_fractions"])
    return WorldConfig(**cfg)
