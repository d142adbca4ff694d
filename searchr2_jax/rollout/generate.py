"""Plain prompt-in/text-out generation (a chat reply, an LLM judge's verdict) on the rollout engine.

One turn, no retriever: each prompt is a slot of `RolloutEngine`, decoded until EOS / end of turn or the token budget.
The engine also stops at the protocol's `</search>` / `</answer>`, so a reply that writes one ends there (it is kept
in the text). Greedy when `temperature` is 0, else sampled (with `top_p`) from `seed`.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax

from searchr2_jax.models.config import DecoderConfig
from searchr2_jax.rollout import rollout as rollout_lib
from searchr2_jax.rollout import types as T
from searchr2_jax.config import default_rollout_config


@dataclasses.dataclass
class Reply:
    text: str  # generated text, special tokens (the end-of-turn token) removed
    status: str  # the rollout status: `invalid` for a plain reply that ended at EOS, `out_of_budget` if cut
    trajectory: T.Trajectory

    @property
    def num_tokens(self) -> int:
        return int(self.trajectory.loss_mask.sum())


def chat_text(tokenizer, user: str, system: str | None = None, history: Sequence[tuple[str, str]] = ()) -> str:
    """`user` as a chat message through the tokenizer's template, ready for the assistant's reply; `history`:
    earlier (user, assistant) exchanges before it (few-shot examples as turns of the conversation)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("chat_text needs a tokenizer with a chat_template (pass chat=False for raw prompts)")
    messages = [{"role": "system", "content": system}] if system is not None else []
    for u, a in history:
        messages += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
    messages.append({"role": "user", "content": user})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@dataclasses.dataclass(frozen=True)
class GenerationSettings:
    """How `generate` decodes: greedy when `temperature` is 0, else sampled with `top_p` from `seed`."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    slots: int = 8  # conversations decoded at once (at most one per prompt)


def generate(cfg: DecoderConfig, params, tokenizer, prompts: Sequence[str], *, chat: bool = True,
             system: str | Sequence[str] | None = None, history: Sequence[tuple[str, str]] = (), mesh=None,
             **settings) -> list[Reply]:
    """Replies to `prompts` in order (through the chat template when `chat`); `system` is one system message for
    every prompt or one per prompt, and `history` (chat only) the (user, assistant) turns before each prompt.
    `settings`: the fields of `GenerationSettings`, by keyword."""
    s = GenerationSettings(**settings)
    systems = [system] * len(prompts) if system is None or isinstance(system, str) else list(system)
    if len(systems) != len(prompts):
        raise ValueError(f"generate: {len(systems)} system messages for {len(prompts)} prompts")
    if history and not chat:
        raise ValueError("generate: history turns need chat=True")
    texts = [chat_text(tokenizer, p, sm, history) if chat else p for p, sm in zip(prompts, systems)]
    ids = [list(tokenizer.encode(t, add_special_tokens=False)) for t in texts]
    config = default_rollout_config()
    config.update(dict(slots=max(1, min(s.slots, len(ids))), max_turns=1,
                       max_prompt_tokens=T.bucket(max((len(i) for i in ids), default=1)),
                       max_response_tokens=s.max_new_tokens, segment_steps=min(64, s.max_new_tokens),
                       temperature=s.temperature, top_p=s.top_p))
    engine = rollout_lib.RolloutEngine(cfg, tokenizer, None, config, mesh=mesh)
    jobs = [T.Job(i, question=p) for i, p in zip(ids, prompts)]
    out = engine.run(params, jobs, jax.random.key(s.seed), greedy=s.temperature <= 0, use_refiner=False)
    return [Reply(tokenizer.decode(list(t.response_ids), skip_special_tokens=True).strip(), t.status, t)
            for t in out.trajectories]
