"""Fuzzing the rollout's host loop: a random-walk model writes hostile text through the real engine.

The model is a real decoder whose layers are zero, so its next token depends on the current token only: a Markov
chain over an alphabet of hostile pieces (protocol tags, tag fragments, end-of-sequence and other special tokens,
words, control characters and odd Unicode as raw bytes, and 1,000-character tokens). Sampled at temperature 1 it
writes unclosed and nested tags, its own `<information>` blocks, `</answer>` before `<answer>`, empty and
10,000-character queries, EOS in the middle of a tag, broken UTF-8, and so on. Every such text goes through what a
real rollout runs: on-device stops, the turn parser, the retriever, observation appends, the Meta-Refiner's cuts.

Each run draws its chain from one of `PROFILES` (class-to-class weights with random noise), so some runs stay close
to the protocol and others are tag soup. Each finished row is checked against invariants that hold whatever the
model wrote (`check_trajectory`); `fuzz` counts crashes, hangs and violations, and which hostile kinds the generated
text actually contained (`hostile_kinds`), so the figures show what was exercised rather than what was intended.
"""

from __future__ import annotations

import dataclasses
import signal
import time
import unicodedata
import zlib
from contextlib import contextmanager

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from searchr2_jax.models import decoder
from searchr2_jax.models.config import DecoderConfig
from searchr2_jax.rollout import refiner as refiner_lib
from searchr2_jax.rollout import rollout as rollout_lib
from searchr2_jax.rollout import types as T
from searchr2_jax.text import protocol
from searchr2_jax.text.tokenizer import all_stop_sequences, eos_token_ids
from searchr2_jax.config import default_rollout_config, default_refiner_config

LONG_TOKEN_CHARS = 1000
# Raw bytes of characters a tokenizer, a parser or a search backend may choke on, emitted one byte token at a time
# (in any order, so also as broken UTF-8).
ODD_TEXT = "\x00\x07\x1b\x7f\u202e\u200b\ufeff\u0301\u2028\ufffd🙂中ﷺ\t\r"
TAG_PIECES = ("<", "</", ">", "/", "search", "answer", "information", "think", "<ans", "wer>", "</sea", "rch>",
              "<info", "</answer", "<search")
WORDS = ("river city empire bridge harbor castle desert forest island volcano library museum composer painter "
         "novel planet comet engine railway canal glacier valley the of who what where born capital").split()

OTHER = "other"  # every token outside the alphabet (prompt, observations) shares one state
_TH, _THC, _S, _SC, _I, _IC, _A, _AC = protocol.PROTOCOL_TAGS

# Class-to-class weights added to a uniform floor; (from, to) pairs, "*" for every class. Each run perturbs them.
PROFILES = {
    "protocol": (0.02, {(OTHER, _TH): 4, (_TH, "word"): 5, ("word", "word"): 3, ("word", _THC): 1, (_THC, _S): 2,
                        (_THC, _A): 1, (_S, "word"): 5, ("word", _SC): 1, (_A, "word"): 4, ("word", _AC): 1,
                        (_AC, "eos"): 5, (OTHER, _A): 1}),
    "long_query": (0.02, {(OTHER, _S): 5, (_S, "long"): 8, ("long", "long"): 12, ("long", _SC): 1, (_SC, "eos"): 1,
                          (OTHER, _A): 1, (_A, "word"): 3, ("word", _AC): 2}),
    "own_information": (0.03, {(OTHER, _I): 3, (_I, "word"): 4, ("word", "word"): 2, ("word", _IC): 1,
                               (_IC, _A): 2, (_IC, _S): 1, (_A, "word"): 3, ("word", _AC): 1, (_S, "word"): 2,
                               ("word", _SC): 1}),
    "tag_soup": (0.2, {("*", _S): 1, ("*", _SC): 1, ("*", _A): 1, ("*", _AC): 1, ("*", _I): 0.5, ("*", _IC): 0.5,
                       ("*", "piece"): 1.5, ("piece", "piece"): 2, ("piece", "eos"): 2, ("piece", "special"): 0.5}),
    "odd_text": (0.05, {(OTHER, _S): 2, (_S, "odd"): 5, ("odd", "odd"): 5, ("odd", _SC): 1, (OTHER, _A): 1,
                        (_A, "odd"): 3, ("odd", _AC): 1, ("odd", "eos"): 0.3}),
    "chaos": (1.0, {}),
}


def hostile_tokenizer(base):
    """`base` (a fast tokenizer) with `LONG_TOKEN_CHARS`-character tokens added, so a query can reach 10,000
    characters within a small response budget."""
    from tokenizers import AddedToken

    base.add_tokens([AddedToken(c * LONG_TOKEN_CHARS, normalized=False, special=False) for c in "xyz"])
    return base


def alphabet(tokenizer) -> dict[str, list[int]]:
    """Class -> the token ids the random walk emits for it."""
    enc = lambda s: tokenizer.encode(s, add_special_tokens=False)
    tag = lambda t: [tokenizer.convert_tokens_to_ids(t)] if t in tokenizer.get_vocab() else enc(t)[-1:]
    out = {t: tag(t) for t in protocol.PROTOCOL_TAGS}
    out["eos"] = eos_token_ids(tokenizer)
    vocab = tokenizer.get_vocab()
    out["special"] = [i for t, i in vocab.items() if t.startswith("<|") and i not in out["eos"]][:4]
    out["piece"] = sorted({i for p in TAG_PIECES for i in enc(p)})
    out["word"] = sorted({i for w in WORDS for i in enc(" " + w)})
    out["odd"] = sorted({i for ch in ODD_TEXT for i in enc(ch)})
    out["long"] = [vocab[c * LONG_TOKEN_CHARS] for c in "xyz" if c * LONG_TOKEN_CHARS in vocab]
    return {c: ids for c, ids in out.items() if ids}


@dataclasses.dataclass
class Walker:
    """The random-walk decoder: `cfg`, and `index` mapping each alphabet token to its state (0 = `OTHER`)."""

    cfg: DecoderConfig
    index: np.ndarray  # [V] int32
    classes: dict[str, list[int]]

    @classmethod
    def build(cls, tokenizer) -> "Walker":
        classes = alphabet(tokenizer)
        V = len(tokenizer)
        index = np.zeros(V, np.int32)
        ids = sorted({i for c in classes.values() for i in c})
        index[ids] = np.arange(1, len(ids) + 1)
        D = len(ids) + 1
        cfg = DecoderConfig(vocab_size=V, hidden_size=D, num_layers=1, num_heads=1, num_kv_heads=1, head_dim=8,
                            intermediate_size=8)
        return cls(cfg, index, classes)

    def params(self, profile: str, rng: np.random.Generator) -> dict:
        """Weights of one chain: the profile's class weights times Gamma noise, spread over each class's tokens."""
        floor, extra = PROFILES[profile]
        names = list(self.classes)
        states = [OTHER] + names
        W = np.full((len(states), len(names)), floor)
        for (a, b), w in extra.items():
            if b not in names:
                continue
            rows = range(len(states)) if a == "*" else [states.index(a)] if a in states else []
            for r in rows:
                W[r, names.index(b)] += w
        W *= rng.gamma(2.0, 0.5, W.shape)
        W /= W.sum(axis=1, keepdims=True)
        D, V = self.cfg.hidden_size, self.cfg.vocab_size
        logp = np.full((D, V), -30.0, np.float32)
        state_class = {0: OTHER}
        for c in names:
            for i in self.classes[c]:
                state_class.setdefault(int(self.index[i]), c)
        for d in range(D):
            row = W[states.index(state_class[d])]
            for c, p in zip(names, row):
                ids = self.classes[c]
                logp[d, ids] = np.log(p / len(ids))
        params = decoder.init_params(self.cfg, jax.random.key(0))
        params["layers"] = jax.tree.map(jnp.zeros_like, params["layers"])
        params["embed"] = jnp.asarray(np.eye(D, dtype=np.float32)[self.index])
        # The final RMSNorm scales a one-hot state by sqrt(D): divide it out of the head.
        params["lm_head"] = jnp.asarray(logp / np.sqrt(D))
        return params


class FlakyRetriever:
    """Wraps a retriever: a query whose hash falls in `fail_share` raises, like a backend that rejects it; every
    answered query's passages are kept, so the checks can tell retrieved text from text the model wrote."""

    def __init__(self, inner, fail_share: float = 0.05):
        self.inner, self.fail_share = inner, fail_share
        self.answers: dict[str, list] = {}

    def fails(self, query: str) -> bool:
        return zlib.crc32(query.encode("utf-8", "replace")) % 1000 < 1000 * self.fail_share

    def search(self, queries, k):
        if any(self.fails(q) for q in queries):
            raise ConnectionError("fuzz: the backend rejects this query")
        out = self.inner.search(queries, k)
        for q, passages in zip(queries, out):
            self.answers[q] = list(passages)
        return out


def stop_kinds(tokenizer) -> dict[tuple[int, ...], str]:
    """Every stop id sequence the engine matches -> the stop string it ends (or the EOS token's text)."""
    return {tuple(ids): s for s, seqs in all_stop_sequences(tokenizer).items() for ids in seqs}


def _stop_at(ids, p, stops) -> str | None:
    """The stop a device check after generating position `p` fires on (it reads the response's last tokens)."""
    for seq, kind in stops.items():
        if p + 1 >= len(seq) and tuple(ids[p + 1 - len(seq):p + 1]) == seq:
            return kind
    return None


def check_trajectory(traj: T.Trajectory, tokenizer, stops: dict, config, retriever, max_revisions: int) -> list[str]:
    """What must hold for any row, whatever the model wrote; returns the violations."""
    c = config
    n = len(traj.response_ids)
    if traj.status not in T.STATUSES:
        return [f"status {traj.status!r}"]
    if not (len(traj.logprobs) == len(traj.loss_mask) == n) or n > c.max_response_tokens:
        return [f"lengths ids {n} logprobs {len(traj.logprobs)} mask {len(traj.loss_mask)}"]
    if traj.status == T.PROMPT_TOO_LONG:
        return [] if n == 0 and not traj.turns else ["prompt_too_long with a response"]
    if not traj.turns:
        return ["no turns"]
    bad = []
    ids = [int(i) for i in traj.response_ids]
    mask = np.zeros(n, np.int8)
    pos = 0
    last_k = len(traj.turns) - 1
    for k, turn in enumerate(traj.turns):
        if turn.start != pos or not turn.start <= turn.end <= turn.obs_end <= n:
            return bad + [f"turn {k} spans [{turn.start}, {turn.end}, {turn.obs_end}) after {pos}"]
        mask[turn.start:turn.end] = 1
        pos = turn.obs_end
        fired = [p for p in range(turn.start, turn.end) if _stop_at(ids, p, stops)]
        kind = _stop_at(ids, turn.end - 1, stops) if turn.end > turn.start else None
        if turn.action == "budget":
            if fired:
                bad.append(f"turn {k} ran past a stop at {fired[0]}")
            if turn.end != c.max_response_tokens:
                bad.append(f"turn {k}: budget turn ends at {turn.end}")
        elif fired != [turn.end - 1]:
            bad.append(f"turn {k} ({turn.action}) ends at {turn.end} but stops fired at {fired}")
        parse = protocol.parse_turn(tokenizer.decode(ids[turn.start:turn.end], skip_special_tokens=False))
        obs = ids[turn.end:turn.obs_end]
        if turn.action == "search":
            if kind != protocol.SEARCH_CLOSE or parse.status != "search" or parse.query != turn.query:
                bad.append(f"turn {k}: search turn stopped on {kind!r}, parses as {parse.status} "
                           f"{parse.query!r:.60}, recorded {turn.query!r:.60}")
            retrieved = turn.error is None and not (k == last_k and traj.status == T.OUT_OF_TURNS)
            if retrieved:
                # Passages are the retriever's for this turn's query: never text the model wrote.
                if [(p.id, p.text) for p in turn.passages] != \
                        [(p.id, p.text) for p in retriever.answers.get(turn.query, [None])]:
                    bad.append(f"turn {k}: passages are not what the retriever returned for its query")
                full = tokenizer.encode(protocol.render_information(turn.passages), add_special_tokens=False)
                if obs != full[:len(obs)] or (not obs and turn.obs_end < n):
                    bad.append(f"turn {k}: the observation is not the rendered passages")
            elif obs or turn.passages:
                bad.append(f"turn {k}: a search that was not run got passages or an observation")
        elif turn.action == "invalid":
            msg = tokenizer.encode(protocol.INVALID_ACTION_MESSAGE, add_special_tokens=False)
            if obs != msg[:len(obs)]:
                bad.append(f"turn {k}: the invalid-action reply is not the message")
            if parse.status == "answer" or (parse.status == "search" and kind == protocol.SEARCH_CLOSE):
                bad.append(f"turn {k}: a parsable {parse.status} turn was called invalid")
        elif turn.action == "answer":
            if parse.status != "answer" or k != last_k or obs:
                bad.append(f"turn {k}: answer turn parses as {parse.status}, or has a reply, or is not last")
    if pos != n:
        bad.append(f"turns end at {pos} of {n}")
    if not np.array_equal(mask, traj.loss_mask):
        bad.append("loss mask is not 1 exactly on generated tokens")
    if np.any(traj.logprobs[traj.loss_mask == 0] != 0) or not np.all(np.isfinite(traj.logprobs)):
        bad.append("log-probs off the generated tokens, or not finite")
    last = traj.turns[-1]
    last_parse = protocol.parse_turn(tokenizer.decode(ids[last.start:last.end], skip_special_tokens=False))
    expect = {T.ANSWERED: last.action == "answer" and traj.answer == last_parse.answer and n == last.end,
              T.RETRIEVAL_ERROR: last.action == "search" and last.error is not None,
              T.OUT_OF_TURNS: last.action == "search" and len(traj.turns) == c.max_turns,
              T.INVALID: last.action == "invalid" and len(traj.turns) == c.max_turns,
              T.OUT_OF_BUDGET: last.action == "budget" or (last.obs_end == last.end
                                                            and n >= c.max_response_tokens - 1)}
    if not expect[traj.status]:
        bad.append(f"status {traj.status} after a last turn {last.action!r} ({len(traj.turns)} turns)")
    if any(t.error is not None for t in traj.turns[:-1]):
        bad.append("a failed search did not end its row")
    if len(traj.cut_steps) > max_revisions or len(traj.drafts) != len(traj.cut_steps):
        bad.append(f"{len(traj.cut_steps)} revisions, {len(traj.drafts)} drafts")
    return bad


_TAG_PREFIXES = {t[:j] for t in protocol.PROTOCOL_TAGS for j in range(1, len(t))}
_LONGEST_TAG = max(len(t) for t in protocol.PROTOCOL_TAGS)


def hostile_kinds(traj: T.Trajectory, tokenizer) -> set[str]:
    """Which hostile kinds the model's own text in this row contains (a revised row's drafts count too)."""
    texts = []
    for ids, turns in [(traj.response_ids, traj.turns)] + [(d.response_ids, d.turns) for d in traj.drafts]:
        for t in turns:
            texts.append((tokenizer.decode([int(i) for i in ids[t.start:t.end]], skip_special_tokens=False), t))
    kinds = set()
    eos = {tokenizer.decode([i], skip_special_tokens=False) for i in eos_token_ids(tokenizer)}
    for text, turn in texts:
        if protocol.INFO_OPEN in text:
            kinds.add("model_information_block")
        for open_, close in ((protocol.SEARCH_OPEN, protocol.SEARCH_CLOSE), (protocol.ANSWER_OPEN,
                                                                              protocol.ANSWER_CLOSE),
                             (protocol.THINK_OPEN, protocol.THINK_CLOSE)):
            o, c_ = text.find(open_), text.find(close)
            if o >= 0 and c_ < 0:
                kinds.add("unclosed_tag")
            if c_ >= 0 and (o < 0 or c_ < o):
                kinds.add("close_before_open")
            if o >= 0 and text.find(open_, o + 1) >= 0 and (c_ < 0 or text.find(open_, o + 1) < c_):
                kinds.add("nested_tag")
        if turn.action == "search" and turn.query is not None and len(turn.query) >= 10_000:
            kinds.add("query_10k_chars")
        if protocol.SEARCH_OPEN in text and protocol.SEARCH_CLOSE in text:
            o = text.find(protocol.SEARCH_OPEN)
            c_ = text.find(protocol.SEARCH_CLOSE, o)
            if c_ >= 0 and not text[o + len(protocol.SEARCH_OPEN):c_].strip():
                kinds.add("empty_query")
        if any(unicodedata.category(ch) in ("Cc", "Cf") and ch not in "\n" for ch in text):
            kinds.add("control_or_format_char")
        if "\ufffd" in text:
            kinds.add("broken_utf8")
        for e in eos:
            if text.endswith(e):
                head = text[: -len(e)]
                if any(head[-j:] in _TAG_PREFIXES for j in range(1, _LONGEST_TAG)):
                    kinds.add("eos_mid_tag")
    return kinds



class FuzzHang(Exception):
    pass


@contextmanager
def _deadline(seconds: float):
    """Raises FuzzHang in the main thread after `seconds` (SIGALRM): a run that never returns is counted, not waited
    for."""
    def on_alarm(signum, frame):
        raise FuzzHang(f"no result after {seconds:g} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def default_fuzz_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        cases=10_000,  # rows rolled out (one hostile conversation each)
        jobs_per_run=512,  # rows per engine run (one chain each); runs alternate profiles and the refiner
        slots=128,
        max_turns=4,
        max_prompt_tokens=48,
        max_response_tokens=192,
        max_obs_tokens=40,
        topk=2,
        segment_steps=16,
        retrieval_timeout_s=10.0,
        run_timeout_s=300.0,  # a run with no result by then is a hang
        fail_share=0.05,  # queries the retriever rejects
        max_violations_logged=20,
    ))


def rollout_config(fc: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The engine's config for a fuzz config: its shapes and timeout, sampled at temperature 1."""
    rc = default_rollout_config()
    rc.update(dict(slots=fc.slots, max_turns=fc.max_turns, max_prompt_tokens=fc.max_prompt_tokens,
                   max_response_tokens=fc.max_response_tokens, max_obs_tokens=fc.max_obs_tokens, topk=fc.topk,
                   segment_steps=fc.segment_steps, retrieval_timeout_s=fc.retrieval_timeout_s, temperature=1.0,
                   min_shared_prefix=8))
    return rc


def fuzz(tokenizer, retriever, config: ml_collections.ConfigDict | None = None, seed: int = 0) -> dict:
    """Rolls out `config.cases` hostile rows through `RolloutEngine` and checks each; returns the figures."""
    fc = config or default_fuzz_config()
    walker = Walker.build(tokenizer)
    flaky = FlakyRetriever(retriever, fc.fail_share)
    rc = rollout_config(fc)
    refiner_cfg = default_refiner_config()
    refiner_cfg.max_revisions = 2
    refiner_cfg.margin = -1e9  # revise every judged row at its most likely step: the cut path runs on every row
    engines = {False: rollout_lib.RolloutEngine(walker.cfg, tokenizer, flaky, rc),
               True: rollout_lib.RolloutEngine(walker.cfg, tokenizer, flaky, rc,
                                               refiner_lib.MetaRefiner(walker.cfg, tokenizer, refiner_cfg,
                                                                       max_turns=fc.max_turns))}
    stops = stop_kinds(tokenizer)
    rng = np.random.default_rng(seed)
    words = [tokenizer.decode([i]) for i in walker.classes["word"]]
    figures = {"fuzz_cases": 0, "fuzz_crashes": 0, "fuzz_hangs": 0, "fuzz_violations": 0, "fuzz_rows_lost": 0,
               "fuzz_runs": 0, "fuzz_revised_rows": 0}
    statuses = {s: 0 for s in T.STATUSES}
    kinds: dict[str, int] = {}
    logged = 0
    profiles = list(PROFILES)
    t0 = time.perf_counter()
    run = 0
    while figures["fuzz_cases"] < fc.cases:
        n = min(fc.jobs_per_run, fc.cases - figures["fuzz_cases"])
        profile = profiles[run % len(profiles)]
        refine = run % 2 == 1
        params = walker.params(profile, rng)
        jobs = []
        for i in range(n):
            question = " ".join(rng.choice(words, rng.integers(1, 8)))
            prompt = tokenizer.encode(f"Question: {question}", add_special_tokens=False)
            if rng.random() < 0.02:  # some prompts longer than the limit
                prompt = prompt * (fc.max_prompt_tokens // max(len(prompt), 1) + 1)
            jobs.append(T.Job(prompt, question=question, golden_answers=("river",), group_id=i))
        engine = engines[refine]
        try:
            with _deadline(fc.run_timeout_s):
                out = engine.run(params, jobs, jax.random.key(seed * 100_003 + run))
        except FuzzHang as e:
            figures["fuzz_hangs"] += n
            logging.error("fuzz run %d (%s): hang: %s", run, profile, e)
            out = None
        except Exception as e:  # noqa: BLE001 - a crash is a figure, not the end of the fuzz
            figures["fuzz_crashes"] += n
            logging.exception("fuzz run %d (%s) crashed: %s", run, profile, e)
            out = None
        figures["fuzz_cases"] += n
        figures["fuzz_runs"] += 1
        run += 1
        if out is None:
            continue
        for job_index, traj in enumerate(out.trajectories):
            if traj is None or traj.job_index != job_index:
                figures["fuzz_rows_lost"] += 1
                continue
            statuses[traj.status] = statuses.get(traj.status, 0) + 1
            figures["fuzz_revised_rows"] += bool(traj.cut_steps)
            problems = check_trajectory(traj, tokenizer, stops, rc, flaky, refiner_cfg.max_revisions if refine else 0)
            if problems:
                figures["fuzz_violations"] += 1
                if logged < fc.max_violations_logged:
                    logged += 1
                    logging.error("fuzz run %d (%s) row %d: %s; response %r", run - 1, profile, job_index,
                                  "; ".join(problems),
                                  tokenizer.decode(list(traj.response_ids), skip_special_tokens=False)[:300])
            for k in hostile_kinds(traj, tokenizer):
                kinds[k] = kinds.get(k, 0) + 1
    figures["fuzz_wall_s"] = round(time.perf_counter() - t0, 1)
    figures["fuzz_status_counts"] = statuses
    figures["fuzz_hostile_kinds"] = dict(sorted(kinds.items()))
    return figures
