"""A WordNet filter over mined negatives (docs/method.md, "Negative labels"): ours, not NegRefine's.

NegRefine (ah-ansari/NegRefine) asks an LLM to remove mined negatives that are subcategories or
proper names of ID classes. This is a deterministic, offline stand-in of our own making, with no
LLM: WordNet 3.0's noun hierarchy (`data.noun`, read directly) decides.

A mined noun is dropped when

- one of its noun senses is an ID class's sense or lies below one (a hyponym, through hypernym `@`
  and instance-hypernym `@i` pointers, transitively); an ID class's senses are all the noun senses
  of its name (`index.noun`, spaces as underscores); or
- it is a proper noun: every noun sense of it is an instance (has an `@i` pointer) or spells it
  capitalised in `data.noun` ("Einstein", "Paris"; "turkey" the bird keeps "Turkey" the country).

Words WordNet does not know as nouns (multi-word names outside it, adjectives, CSP's phrases) pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

FILTERS = ("none", "wordnet")
# what a negatives artifact and a score identity record for the filter (bump `rules` when they change)
FILTER_RECORD = {"name": "wordnet", "wordnet": "3.0", "rules": 1, "senses": "all noun senses of each ID name", "drops": ["hyponyms", "proper nouns"]}


@dataclass
class _Synset:
    lemmas: tuple[str, ...]  # as data.noun spells them (case kept, underscores)
    instance: bool
    parents: tuple[str, ...]  # hypernyms and instance hypernyms


@dataclass
class NounHierarchy:
    """WordNet's noun synsets and lemma index, parsed once."""

    synsets: dict[str, _Synset]
    index: dict[str, tuple[str, ...]]  # lowercase lemma (underscores) -> synset offsets
    _ancestors: dict = field(default_factory=dict, repr=False)

    def senses(self, word: str) -> tuple[str, ...]:
        return self.index.get(word.strip().lower().replace(" ", "_"), ())

    def ancestors(self, offset: str) -> frozenset[str]:
        """The synset and every synset above it (hypernyms and instance hypernyms, transitively)."""
        if offset in self._ancestors:
            return self._ancestors[offset]
        seen, todo = {offset}, [offset]
        while todo:
            s = self.synsets.get(todo.pop())
            for p in s.parents if s else ():
                if p not in seen:
                    seen.add(p)
                    todo.append(p)
        out = self._ancestors[offset] = frozenset(seen)
        return out

    def is_proper(self, word: str) -> bool:
        senses = self.senses(word)
        if not senses:
            return False
        key = word.strip().lower().replace(" ", "_")

        def proper(offset: str) -> bool:
            s = self.synsets.get(offset)
            if s is None:
                return False
            spelled = [lem for lem in s.lemmas if lem.lower() == key]
            return s.instance or bool(spelled) and all(lem[:1].isupper() for lem in spelled)

        return all(proper(o) for o in senses)


def parse_noun_hierarchy(data_noun: str, index_noun: str) -> NounHierarchy:
    """Parse WordNet 3.0 `data.noun` and `index.noun` text (license header lines start with two spaces)."""
    synsets: dict[str, _Synset] = {}
    for line in data_noun.splitlines():
        if not line or line.startswith("  "):
            continue
        fields = line.split(" | ", 1)[0].split()
        offset, w_cnt = fields[0], int(fields[3], 16)
        lemmas = tuple(fields[4 + 2 * i] for i in range(w_cnt))
        pos = 4 + 2 * w_cnt
        p_cnt = int(fields[pos])
        parents, instance = [], False
        for i in range(p_cnt):
            symbol, target = fields[pos + 1 + 4 * i], fields[pos + 2 + 4 * i]
            if symbol in ("@", "@i"):
                parents.append(target)
                instance = instance or symbol == "@i"
        synsets[offset] = _Synset(lemmas, instance, tuple(parents))
    index: dict[str, tuple[str, ...]] = {}
    for line in index_noun.splitlines():
        if not line or line.startswith("  "):
            continue
        fields = line.split()
        index[fields[0]] = tuple(fields[-int(fields[2]):])
    return NounHierarchy(synsets, index)


def load_noun_hierarchy(path=None) -> tuple[NounHierarchy, str]:
    """The hierarchy of the WordNet that `lexicons` finds (exit 2 with the install hint when absent), and its source."""
    from synood_cli.lexicons import _find_wordnet

    found = _find_wordnet(path)
    if found.source not in _PARSED:  # 1.4 s a parse: once per process and WordNet
        _PARSED[found.source] = parse_noun_hierarchy(found.read("data.noun"), found.read("index.noun"))
    return _PARSED[found.source], found.source


_PARSED: dict[str, NounHierarchy] = {}


@dataclass
class FilterResult:
    keep: list[bool]
    hyponyms: list[tuple[str, str]]  # (negative, the ID class it lies under)
    proper: list[str]


def wordnet_filter(labels: list[str], kinds: list[str], class_names: list[str], hierarchy: NounHierarchy) -> FilterResult:
    """Which mined negatives survive: nouns under an ID class's sense, and proper nouns, are dropped."""
    id_synsets: dict[str, str] = {}
    for name in class_names:
        for o in hierarchy.senses(name):
            id_synsets.setdefault(o, name)
    keep, hyponyms, proper = [], [], []
    for label, kind in zip(labels, kinds):
        if kind != "noun":
            keep.append(True)
            continue
        under = next((id_synsets[a] for o in hierarchy.senses(label) for a in sorted(hierarchy.ancestors(o)) if a in id_synsets), None)
        if under is not None:
            hyponyms.append((label, under))
            keep.append(False)
        elif hierarchy.is_proper(label):
            proper.append(label)
            keep.append(False)
        else:
            keep.append(True)
    return FilterResult(keep, hyponyms, proper)
