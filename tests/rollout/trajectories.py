"""Hand-built trajectories for the dump and viewer tests: texts in, Trajectory records out, no model.

`CharTokenizer` makes token ids the text's code points, so any text (tags, `</script>`, non-ASCII) survives the
dump's decoding exactly and turn positions are character offsets.
"""

from __future__ import annotations

import numpy as np

from searchr2_jax.data import synthetic
from searchr2_jax.retrieval.types import Passage
from searchr2_jax.rollout import types as T
from searchr2_jax.text import protocol


class CharTokenizer:
    def encode(self, text, add_special_tokens=False):
        return [ord(c) for c in text]

    def decode(self, ids, skip_special_tokens=False):
        return "".join(map(chr, ids))


TOK = CharTokenizer()


def response(steps):
    """(response ids, turns) of assistant turns [(text, passages or None)], each followed by what the environment
    appends: the information block of a search, the invalid-action message of an invalid turn, nothing after an
    answer."""
    text, turns = "", []
    for assistant, passages in steps:
        start = len(text)
        text += assistant
        end = len(text)
        parse = protocol.parse_turn(assistant)
        if parse.status == "search":
            text += protocol.render_information(passages or [])
        elif parse.status == "invalid":
            text += protocol.INVALID_ACTION_MESSAGE
        turns.append(T.Turn(start, end, len(text), parse.status, query=parse.query, passages=list(passages or [])))
    return np.asarray(TOK.encode(text), np.int32), turns


def answer_of(steps):
    last = protocol.parse_turn(steps[-1][0]) if steps else None
    return last.answer if last is not None and last.status == "answer" else None


def meta(choice, scores, forced=False):
    return T.MetaAction(prompt_ids=[1, 2], action_ids=[3], choice=choice, logprob=float(scores[choice]),
                        scores=list(scores), forced=forced)


def trajectory(job, steps, index=0, draft_steps=None, cut=0, scores=None, accept_scores=None):
    """A finished trajectory of `steps`; with `draft_steps`, it is the regeneration of that draft cut at step `cut`
    (the steps before the cut must be the same), judged with `scores`, then accepted with `accept_scores`."""
    ids, turns = response(steps)
    n = len(ids)
    status = T.ANSWERED if answer_of(steps) is not None else T.OUT_OF_TURNS
    t = T.Trajectory(index, job, ids, np.zeros(n, np.float32), np.ones(n, np.int8), turns, status,
                     answer=answer_of(steps))
    if draft_steps is not None:
        assert draft_steps[:cut - 1] == steps[:cut - 1], "a draft and its regeneration share the steps before the cut"
        d_ids, d_turns = response(draft_steps)
        d_status = T.ANSWERED if answer_of(draft_steps) is not None else T.OUT_OF_TURNS
        t.drafts = [T.Draft(d_ids, d_turns, d_status, answer_of(draft_steps))]
        t.cut_steps, t.kept_tokens = [cut], [d_turns[cut - 1].start]
        t.meta_actions.append(meta(cut, scores))
    if accept_scores is not None:
        t.meta_actions.append(meta(0, accept_scores))
    return t


def world_passage(world, pid):
    contents = world.passages[int(pid)]["contents"]
    title, _, text = contents.partition("\n")
    return Passage(str(pid), title.strip('"'), text)


def world_trajectories(n, seed=0):
    """`n` trajectories over a tiny synthetic world's questions, shaped like a trained agent's: one search per hop
    (its gold passage among others), then the answer; every third one revised (its draft answered one hop short,
    the regeneration searched on)."""
    world = synthetic.generate_world(synthetic.WorldConfig.tiny(seed=seed, num_questions=max(n, 60)))
    rng = np.random.default_rng(seed)
    out = []
    for i, ex in enumerate((world.questions * (n // len(world.questions) + 1))[:n]):
        meta_ = ex.metadata
        job = T.Job([1, 2, 3], question=ex.question, golden_answers=tuple(ex.golden_answers), group_id=i // 5,
                    metadata={"id": ex.id, "data_source": ex.data_source, **meta_})
        steps = []
        for h, (query, gold) in enumerate(zip(meta_["hop_queries"], meta_["gold_passage_ids"])):
            others = [str(p) for p in rng.choice(len(world.passages), size=2, replace=False)]
            steps.append((f"<think> I need hop {h + 1}: {query}. </think>\n<search> {query} </search>",
                          [world_passage(world, p) for p in [gold, *others]]))
        right = i % 4 != 3
        answer = ex.golden_answers[0] if right else "Nobody"
        steps.append((f"<think> The passages say {answer}. </think>\n<answer> {answer} </answer>", None))
        hops = meta_["hops"]
        if i % 3 == 0 and hops > 1:
            draft = steps[:hops - 1] + [("<think> That is enough. </think>\n<answer> Bridge </answer>", None)]
            scores = np.log(rng.dirichlet(np.ones(hops + 1)))
            scores[hops] = scores.max() + 0.5  # the cut falls on the early answer
            out.append(trajectory(job, steps, i, draft_steps=draft, cut=hops, scores=scores))
        else:
            out.append(trajectory(job, steps, i, accept_scores=np.log(rng.dirichlet(np.ones(len(steps) + 1)))))
    return out
