"""Readable text for a trajectory: turns, queries, passages, status, and the Meta-Refiner's decisions and cuts."""

from __future__ import annotations

import textwrap

from searchr2_jax.rollout.types import Trajectory


def render_trajectory(traj: Trajectory, tokenizer, width: int = 110, passage_chars: int = 160) -> str:
    dec = lambda a, b: tokenizer.decode(list(traj.response_ids[a:b]), skip_special_tokens=False)
    lines = [f"== job {traj.job_index} | group {traj.job.group_id} | status {traj.status} | "
             f"answer {traj.answer!r} | gold {list(traj.job.golden_answers)}",
             f"Q: {traj.job.question}"]
    for i, turn in enumerate(traj.turns, start=1):
        text = " ".join(dec(turn.start, turn.end).split())
        lines.append(f"-- step {i} [{turn.action}] tokens {turn.start}:{turn.end}")
        lines.extend(textwrap.wrap(text, width, initial_indent="   ", subsequent_indent="   ") or ["   (empty)"])
        if turn.query is not None:
            lines.append(f"   query: {turn.query!r}")
        for p in turn.passages:
            lines.append(f"   · [{p.id}] {p.title}: {p.text[:passage_chars]}")
        if turn.error:
            lines.append(f"   retrieval error: {turn.error}")
        if turn.obs_end > turn.end and not turn.passages:
            lines.append(f"   tool: {' '.join(dec(turn.end, turn.obs_end).split())[:width]}")
    for k, meta in enumerate(traj.meta_actions):
        scores = ", ".join(f"{j}:{s:.2f}" for j, s in enumerate(meta.scores))
        verdict = "accept" if meta.choice == 0 else f"revise from step {meta.choice}"
        cut = f", kept {traj.kept_tokens[k]} tokens" if meta.choice and k < len(traj.kept_tokens) else ""
        lines.append(f"-- refiner #{k + 1}: {verdict}{cut}{' (forced)' if meta.forced else ''} | log p: {scores}")
    n_gen = int(traj.loss_mask.sum())
    lines.append(f"-- {len(traj.response_ids)} response tokens, {n_gen} generated, "
                 f"{len(traj.response_ids) - n_gen} from tools")
    return "\n".join(lines)
