"""Multi-turn search rollouts (paper Algorithm 2) with the Meta-Refiner's cut-and-regenerate (Algorithm 1).

One engine serves every generator: training rollouts (sampling, refiner on), greedy evaluation (refiner off), and
any other prompt-in/text-out use (the LLM judge). The loop, host side, in plain words:

    admit jobs into free slots (prompt chunk -> cache; the prefix all prompts share is encoded once and copied)
    repeat:
        decode_segment: the running slots (gathered, so idle ones cost nothing; long and short conversations in
            calls of their own) generate until a stop sequence, their budget, K steps, or until a share of them
            has stopped (one sync)
        for slots that stopped: parse the turn;
            </search> -> query;  </answer> -> finished;  anything else -> invalid-action message
        one retrieval call for all queries -> <information> blocks, appended to each slot's cache as a chunk
        finished slots -> Meta-Refiner (batched): its follow-up prompt is appended to each slot's cache, in the
            same calls as the information blocks, and the candidates are read from the next-token logits (the
            trajectory itself is never re-encoded);
            accept -> record, free the slot; revise at step j -> cut the slot back to the end of turn j-1
            in place (no re-prefill) and let the Actor continue
        free slots take the next jobs (continuous batching)

Faults never stop the batch: a retrieval call that raises or times out marks only its rows (status
`retrieval_error`), a model that never stops ends at its budget, an over-long prompt is marked `prompt_too_long`.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
from typing import Sequence

import jax
import ml_collections
import numpy as np

from searchr2_jax.models import decoder
from searchr2_jax.models.config import DecoderConfig
from searchr2_jax.retrieval.types import Retriever
from searchr2_jax.rollout import cost_model
from searchr2_jax.rollout import sampler
from searchr2_jax.rollout import types as T
from searchr2_jax.rollout.records import Append, DecodeCall, Finished, Judged, Outcome, Revision, Run, Slot
from searchr2_jax.rollout.refiner import Decision, MetaRefiner, turn_texts
from searchr2_jax.rollout.search_calls import search_rows
from searchr2_jax.text import protocol
from searchr2_jax.text.tokenizer import all_stop_sequences
from searchr2_jax.config import default_rollout_config

log = logging.getLogger(__name__)

KIND_SEARCH, KIND_ANSWER, KIND_EOS = 0, 1, 2


@dataclasses.dataclass
class RolloutOutput:
    trajectories: list[T.Trajectory]
    metrics: dict


class RolloutEngine:
    def __init__(self, cfg: DecoderConfig, tokenizer, retriever: Retriever | None,
                 config: ml_collections.ConfigDict | None = None, refiner: MetaRefiner | None = None,
                 mesh=None):
        self.cfg = cfg
        self.mesh = mesh
        self.tokenizer = tokenizer
        self.retriever = retriever
        self.config = config or default_rollout_config()
        self.refiner = refiner
        kinds = {protocol.SEARCH_CLOSE: KIND_SEARCH, protocol.ANSWER_CLOSE: KIND_ANSWER}
        seqs = [(list(ids), kinds.get(s, KIND_EOS)) for s, variants in all_stop_sequences(tokenizer).items()
                for ids in variants]
        self.stops = sampler.make_stop_table(seqs)
        # Room for the refiner's follow-up prompt after a full response, when it is scored in the slot.
        followup = refiner.max_followup_len if refiner is not None else 0
        self.capacity = self.config.max_prompt_tokens + self.config.max_response_tokens + followup

    # ---------------------------------------------------------------------------------------------- public

    def run(self, params, jobs: Sequence[T.Job], rng: jax.Array, greedy: bool = False,
            refiner_params=None, use_refiner: bool = True) -> RolloutOutput:
        """Rolls out every job; returns trajectories in job order and the rollout metrics."""
        c = self.config
        refiner = self.refiner if (use_refiner and self.refiner and self.refiner.config.enabled
                                   and self.refiner.config.max_revisions > 0) else None
        # Sampling keys are per job and revision (`Slot.stream`) and position, not per slot or segment (see
        # `decode_segment`), so a refined rollout differs from a plain one only where it revised.
        decode_key, host_key = jax.random.split(rng)
        host_seed = int(jax.random.randint(host_key, (), 0, 2**31 - 1))  # the refiner's draws, per job
        sampling = sampler.Sampling(params=sampler.sampling_params(0.0 if greedy else c.temperature, c.top_p),
                                    stops=self.stops, rng=decode_key)
        state = sampler.init_slots(self.cfg, c.slots, self.capacity, c.max_response_tokens)
        if self.mesh is not None:  # slots split over data x fsdp like any batch, kv heads over tensor
            state = jax.device_put(state, self._slot_shardings(state))
        out: list[T.Trajectory | None] = [None] * len(jobs)
        queue = collections.deque()
        for i, job in enumerate(jobs):
            if not job.prompt_ids or len(job.prompt_ids) > c.max_prompt_tokens:
                out[i] = T.Trajectory(i, job, np.zeros(0, np.int32), np.zeros(0, np.float32), np.zeros(0, np.int8),
                                      [], T.PROMPT_TOO_LONG)
            else:
                queue.append(i)
        t_start = time.perf_counter()
        device_s = 0.0
        # Generation reads each layer's weights from buffers of their own (`per_layer_weights`); the refiner's full
        # passes (`MetaRefiner.judge`) take `params` as they are.
        ctx = Run(jobs=jobs, params=params, gen_params=decoder.per_layer_weights(self.cfg, params), refiner=refiner,
                  refiner_params=refiner_params, seed=host_seed, queue=queue, slots=[None] * c.slots, out=out)
        ctx.prefix = self._shared_prefix(ctx.gen_params, [jobs[i] for i in queue])
        state, pending = self._admit(ctx, state)
        while pending or any(ctx.slots):
            t0 = time.perf_counter()
            if pending:
                state = self._append(ctx, state, pending)
                pending = []
            state = self._decode(ctx, state, sampling)
            ends = jax.device_get(state._replace(cache=None, next_logits=None, tokens=None, logprobs=None,
                                                 loss_mask=None))
            device_s += time.perf_counter() - t0
            stopped = [b for b, s in enumerate(ctx.slots) if s is not None and ends.status[b] != sampler.RUNNING]
            if stopped:
                state, pending = self._round(ctx, state, stopped, ends)

        wall = time.perf_counter() - t_start
        device_s += ctx.counts["refiner_score_s"]
        return RolloutOutput(list(out), ctx.metrics(wall, device_s))

    def _slot_shardings(self, state):
        from searchr2_jax.models import sharding

        rows = lambda x: sharding.batch_sharding(self.mesh, x.shape)
        cache = sharding.cache_shardings(self.cfg, self.mesh, self.config.slots, self.capacity)
        return state._replace(cache=cache, **{k: rows(v) for k, v in state._asdict().items() if k != "cache"})

    # ---------------------------------------------------------------------------------------------- steps

    def _round(self, ctx: Run, state, stopped: list[int], ends: sampler.SlotState):
        """The host's work after a segment, for the slots that stopped in it (`stopped`): parse their turns,
        retrieve, judge and settle the finished ones, admit new jobs. `ends` is the host copy of the state's status,
        stop kinds and lengths. Returns the state and the appends pending for the next segment."""
        host = ends._replace(**jax.device_get(dict(tokens=state.tokens, logprobs=state.logprobs,
                                                   loss_mask=state.loss_mask)))
        closed = [self._close_turn(ctx, b, host) for b in stopped]
        retrieved = self._retrieve(ctx, [o.slot for o in closed if o.search])
        fitted = [self._fit_observation(ctx, o, host) for o in closed + retrieved if o.observation is not None]
        finished = ([o.finished for o in closed + retrieved if o.finished is not None]
                    + [f for f in fitted if isinstance(f, Finished)])
        pending = [a for a in fitted if isinstance(a, Append)]
        if finished:
            # The observations ride in the follow-ups' append: one set of calls, not two.
            judged = self._judge(ctx, state, finished, host, pending)
            state, pending = judged.state, judged.unsent
            settled = [self._settle(ctx, f, judged.decisions.get(f.slot), host) for f in finished]
            revisions = [r for r in settled if isinstance(r, Revision)]
            if revisions:
                state = self._truncate(state, revisions)
                pending += [r.restart for r in revisions]
            for f, traj in zip(finished, settled):
                if isinstance(traj, T.Trajectory):
                    ctx.out[traj.job_index] = traj
                    ctx.slots[f.slot] = None
                    ctx.counts["tokens_generated"] += int(traj.loss_mask.sum())
        state, admitted = self._admit(ctx, state)
        return state, pending + admitted

    def _shared_prefix(self, params, jobs):
        """(length, one-row cache) of the longest prompt prefix all jobs share, or None if it is shorter than
        `min_shared_prefix`. Every job keeps at least one token of its own, whose logits start its decode."""
        n = self.config.min_shared_prefix
        if n <= 0 or len(jobs) < 2:
            return None
        prompts = [np.asarray(j.prompt_ids) for j in jobs]
        first, shortest = prompts[0], min(len(p) for p in prompts) - 1
        if shortest < n:
            return None
        agree = np.ones(shortest, bool)
        for p in prompts[1:]:
            agree &= p[:shortest] == first[:shortest]
        length = int(np.argmin(agree)) if not agree.all() else shortest
        if length < n:
            return None
        C = T.bucket(length, minimum=n, fine=True)
        chunk, valid = np.zeros((1, C), np.int32), np.zeros((1, C), bool)
        chunk[0, :length], valid[0, :length] = first[:length], True
        return length, sampler.encode_prefix(self.cfg, params, chunk, valid)

    def _admit(self, ctx: Run, state):
        """Free slots take queued jobs; returns the state and their prompt chunks (which reset the slot), or, with a
        shared prefix, the slots start from its cache and the chunks are the rest of each prompt."""
        items, rows = [], []
        for b in range(len(ctx.slots)):
            if ctx.slots[b] is None and ctx.queue:
                i = ctx.queue.popleft()
                ctx.slots[b] = Slot(job_index=i, job=ctx.jobs[i])
                ids = list(ctx.jobs[i].prompt_ids)
                if ctx.prefix is None:
                    items.append(Append(slot=b, ids=ids, reset_cache=True, clear_response=True))
                else:
                    rows.append(b)
                    items.append(Append(slot=b, ids=ids[ctx.prefix[0]:], clear_response=True))
        if rows:
            state = sampler.seed_rows(state, self._rows(rows), ctx.prefix[1])
        return state, items

    def _rows(self, ids) -> np.ndarray:
        """Slot ids padded to a bucketed count with B: the pads point past the slots and device calls drop them."""
        rows = np.full((T.bucket(len(ids), minimum=1),), self.config.slots, np.int32)
        rows[:len(ids)] = ids
        return rows

    def _segment(self, lengths, status) -> list[DecodeCall]:
        """The decode calls of the next segment: the running slots only (`decode_segment` says why), split by the
        length of their conversations (`cost_model.decode_groups`); each call ends after `segment_exit_share` of
        its rows stop. With a mesh the slots are sharded over devices and gathering them would move caches between
        devices: every slot is decoded there, in one call."""
        c, B = self.config, self.config.slots
        running = np.flatnonzero(status == sampler.RUNNING).astype(np.int32)
        exits = lambda n: np.int32(max(1, int(np.ceil(c.segment_exit_share * n))))
        window = lambda ls: sampler.attention_window(ls, c.segment_steps, self.capacity)
        if self.mesh is not None:
            return [DecodeCall(rows=None, window=window(lengths[running]), exit_stops=exits(len(running)))]
        windows = np.asarray([window(lengths[b:b + 1]) for b in running], np.int32)
        order = np.argsort(windows, kind="stable")
        running, windows = running[order], windows[order]
        calls = []
        for i, j in cost_model.decode_groups(windows.tolist()):
            rows = self._rows(running[i:j])
            calls.append(DecodeCall(rows=None if len(rows) >= B else rows, window=int(windows[j - 1]),
                                    exit_stops=exits(j - i)))
        return calls

    def _decode(self, ctx: Run, state, sampling: sampler.Sampling):
        """One segment: `decode_segment` for each call of `_segment`; counts the steps and decoded rows."""
        c, m = self.config, ctx.counts
        lengths, status = jax.device_get((state.cache.lengths, state.status))
        streams = np.asarray([0 if s is None else s.stream for s in ctx.slots], np.int32)
        calls, steps = self._segment(lengths, status), []
        for call in calls:
            shape = sampler.SegmentShape(max_steps=c.segment_steps, window=call.window)
            state, n = sampler.decode_segment(self.cfg, ctx.gen_params, state, sampling, shape, call.rows,
                                              call.exit_stops, streams)
            steps.append(n)
        steps = jax.device_get(steps)
        m["decode_steps"] += int(max(steps, default=0))
        m["decode_calls"] += len(steps)
        m["decode_row_steps"] += sum(int(n) * (c.slots if call.rows is None else len(call.rows))
                                     for call, n in zip(calls, steps))
        m["segments"] += 1
        return state

    def _append(self, ctx: Run, state, items: list[Append]):
        """`append_rows` for `items`, longest first, in the groups `cost_model.append_groups` picks, each padded to
        its own longest chunk (bucketed). Counts the tokens encoded, padded (`append_tokens`) and real
        (`append_valid_tokens`)."""
        lengths = jax.device_get(state.cache.lengths)
        items = sorted(items, key=lambda it: -len(it.ids))
        for i, j, n in cost_model.append_groups([len(it.ids) for it in items]):
            C = T.bucket(len(items[i].ids), minimum=1, fine=True)
            state = self._append_group(ctx.gen_params, state, items[i:j], lengths, C, n)
            ctx.counts["append_tokens"] += n * C
            ctx.counts["append_valid_tokens"] += sum(len(it.ids) for it in items[i:j])
        return state

    def _append_group(self, params, state, items: list[Append], lengths, C: int, n: int):
        """One `append_rows` call: `items` in `n` rows (the rest pad the bucket), chunks padded to C tokens. The
        slots' cache `lengths` size its attention window."""
        rows = np.full((n,), self.config.slots, np.int32)
        chunk = np.zeros((n, C), np.int32)
        valid = np.zeros((n, C), bool)
        flags = np.zeros((4, n), bool)
        ends = []
        for r, it in enumerate(items):
            rows[r] = it.slot
            chunk[r, :len(it.ids)] = it.ids
            valid[r, :len(it.ids)] = True
            flags[:, r] = (it.reset_cache, it.clear_response, it.generated, it.run)
            ends.append((0 if it.reset_cache else int(lengths[it.slot])) + len(it.ids))
        window = sampler.attention_window(np.asarray(ends), 0, self.capacity)
        batch = sampler.AppendBatch(rows=rows, chunk=chunk, valid=valid, reset_cache=flags[0],
                                    clear_response=flags[1], generated=flags[2], run=flags[3])
        return sampler.append_rows(self.cfg, params, state, batch, window=window)

    def _truncate(self, state, revisions: list[Revision]):
        """Cuts revised slots back to their kept prefix (bucketed row count, pads dropped)."""
        rows = self._rows([r.slot for r in revisions])
        lengths = np.zeros((2, len(rows)), np.int32)  # the pads' lengths are dropped with them
        lengths[:, :len(revisions)] = [[r.response_len for r in revisions], [r.cache_len for r in revisions]]
        return sampler.truncate_rows(state, rows, *lengths)

    def _close_turn(self, ctx: Run, b: int, host: sampler.SlotState) -> Outcome:
        """Classifies the turn slot `b` just ended: </search> -> its query, </answer> -> finished, anything else ->
        the invalid-action message; a turn at the budget or the turn limit finishes the trajectory."""
        slot = ctx.slots[b]
        start, length = slot.turn_start, int(host.length[b])
        text = self.tokenizer.decode(list(host.tokens[b, start:length]), skip_special_tokens=False)
        if int(host.status[b]) == sampler.STOP_BUDGET:
            slot.turns.append(T.Turn(start, length, length, "budget"))
            return Outcome(slot=b, finished=Finished(slot=b, status=T.OUT_OF_BUDGET))
        parse = protocol.parse_turn(text)
        if parse.status == "answer":
            slot.turns.append(T.Turn(start, length, length, "answer"))
            return Outcome(slot=b, finished=Finished(slot=b, status=T.ANSWERED, answer=parse.answer))
        search = parse.status == "search" and int(host.stop_kind[b]) == KIND_SEARCH
        if search:
            slot.turns.append(T.Turn(start, length, length, "search", query=parse.query))
        else:
            slot.turns.append(T.Turn(start, length, length, "invalid"))
        if len(slot.turns) >= self.config.max_turns:
            return Outcome(slot=b, finished=Finished(slot=b, status=T.OUT_OF_TURNS if search else T.INVALID))
        if search:
            return Outcome(slot=b, search=True)
        return Outcome(slot=b, observation=protocol.INVALID_ACTION_MESSAGE)

    def _retrieve(self, ctx: Run, searches: list[int]) -> list[Outcome]:
        """One retrieval call for every slot that searched (`search_rows`); returns per slot its `<information>`
        block, or its end (`retrieval_error`)."""
        if not searches:
            return []
        queries = [ctx.slots[b].turns[-1].query for b in searches]
        t0 = time.perf_counter()
        results = search_rows(self.retriever, queries, self.config.topk, self.config.retrieval_timeout_s)
        ctx.counts["retrieval_s"] += time.perf_counter() - t0
        ctx.counts["retrieval_calls"] += 1
        outcomes = []
        for b, result in zip(searches, results):
            turn = ctx.slots[b].turns[-1]
            if result.error is not None:
                log.warning("retrieval failed for job %d: %s", ctx.slots[b].job_index, result.error)
                turn.error = result.error
                outcomes.append(Outcome(slot=b, finished=Finished(slot=b, status=T.RETRIEVAL_ERROR)))
                continue
            turn.passages = list(result.passages or [])
            outcomes.append(Outcome(slot=b, observation=protocol.render_information(turn.passages)))
        return outcomes

    def _fit_observation(self, ctx: Run, outcome: Outcome, host: sampler.SlotState) -> Append | Finished:
        """Tokenizes an observation and caps it to the per-block limit and the remaining budget; a slot with no room
        left for it and one more generated token finishes instead."""
        b, length = outcome.slot, int(host.length[outcome.slot])
        ids = list(self.tokenizer.encode(outcome.observation, add_special_tokens=False))[: self.config.max_obs_tokens]
        room = self.config.max_response_tokens - length - 1
        if room <= 0:
            return Finished(slot=b, status=T.OUT_OF_BUDGET)
        ids = ids[:room]
        slot = ctx.slots[b]
        slot.turns[-1].obs_end = length + len(ids)
        slot.turn_start = length + len(ids)
        return Append(slot=b, ids=ids, generated=True)

    def _judge(self, ctx: Run, state, finished: list[Finished], host: sampler.SlotState, ride: list[Append]) -> Judged:
        """The Meta-Refiner's decisions for the finished slots that may still be revised (`MetaRefiner.judge`). Under
        the Actor's own parameters it may score them in their slots, through `in_slots`, whose append also carries
        the `ride` items (other slots' observations): a follow-up scored when only one or two slots finish does not
        take a call of its own."""
        refiner, slots, m = ctx.refiner, ctx.slots, ctx.counts
        cands = [] if refiner is None else [f for f in finished if slots[f.slot].turns
                                            and len(slots[f.slot].cut_steps) < refiner.config.max_revisions]
        if not cands:
            return Judged(state=state, decisions={}, unsent=ride)
        partial = [slots[f.slot].trajectory(host, f) for f in cands]
        texts = [turn_texts(self.tokenizer, t.response_ids, t.turns) for t in partial]
        rngs = [np.random.default_rng([ctx.seed, slots[f.slot].stream]) for f in cands]
        rows = [f.slot for f in cands]

        def in_slots(followups: list[list[int]], candidates: np.ndarray) -> np.ndarray:
            # The follow-ups go in the cache only (the slots stay idle); the candidates are read from the slots'
            # next-token logits.
            nonlocal state, ride
            items = ride + [Append(slot=b, ids=ids, run=False) for b, ids in zip(rows, followups)]
            state, ride = self._append(ctx, state, items), []
            lp = sampler.next_token_logprobs(state, self._rows(rows), candidates)
            return np.asarray(jax.device_get(lp))[:len(rows)]

        t0 = time.perf_counter()
        own = ctx.refiner_params is None
        decisions, score_s = refiner.judge(ctx.params if own else ctx.refiner_params, partial, texts, rngs,
                                           in_slots=in_slots if own else None)
        m["refiner_score_s"] += score_s
        m["refiner_host_s"] += time.perf_counter() - t0 - score_s
        m["refiner_calls"] += 1
        m["refiner_judged"] += len(cands)
        return Judged(state=state, decisions=dict(zip(rows, decisions)), unsent=ride)

    def _settle(self, ctx: Run, f: Finished, decision: Decision | None, host: sampler.SlotState
                ) -> T.Trajectory | Revision:
        """A finished slot's trajectory, or (the Meta-Refiner revised it at step j) the cut that takes the slot back
        to the end of turn j-1 in place, for the Actor to regenerate from there."""
        s, b = ctx.slots[f.slot], f.slot
        if decision is not None:
            s.meta_actions.append(decision.meta)
        if decision is None or decision.choice < 1:
            traj = s.trajectory(host, f)
            traj.meta_actions, traj.cut_steps, traj.kept_tokens = s.meta_actions, s.cut_steps, s.kept_tokens
            traj.drafts = s.drafts
            return traj
        j = decision.choice
        # The draft about to be overwritten in the slot, copied off the host array it already sits in.
        n = int(host.length[b])
        s.drafts.append(T.Draft(np.array(host.tokens[b, :n], np.int32), list(s.turns), f.status, f.answer,
                                np.array(host.logprobs[b, :n], np.float32), np.array(host.loss_mask[b, :n], np.int8)))
        keep = s.turns[j - 1].start  # response tokens before the flawed turn (with their tool outputs)
        s.turns = s.turns[: j - 1]
        s.turn_start = keep
        s.cut_steps.append(j)
        s.kept_tokens.append(keep)
        prompt = s.job.prompt_ids
        # Truncate one token short and re-append it, so the slot gets fresh next-token logits.
        last = [int(host.tokens[b, keep - 1])] if keep > 0 else [prompt[-1]]
        ctx.counts["revisions"] += 1
        return Revision(slot=b, response_len=max(keep - 1, 0), cache_len=len(prompt) + keep - 1,
                        restart=Append(slot=b, ids=last, generated=keep > 0))
