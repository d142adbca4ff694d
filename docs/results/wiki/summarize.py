"""OUT/summary.json from OUT/before/table.json (and OUT/warm, OUT/after when the warm start and the trained agent
were evaluated): each figure is a test-set EM with its 95% bootstrap interval beside it (`*_ci`); a figure not
measured is null. RL's own effect is the paired gain of the trained agent over the warm start, question by
question (`rl_gain_over_warm_start`)."""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))

from searchr2_jax.eval.stats import paired_gain  # noqa: E402
from searchr2_jax.jsonl import read_jsonl  # noqa: E402


def main(out: str) -> None:
    def load(name):
        path = os.path.join(out, name, "table.json")
        if not os.path.isfile(path):
            return None
        with open(path, encoding="utf-8") as f:
            return json.load(f)

    before, warm, after = load("before"), load("warm"), load("after")
    if before is None:
        sys.exit(f"{out}/before/table.json: missing (run docs/results/wiki/run.sh first)")
    s = {"questions": before["methods"]["direct"]["Avg"]["n"], "settings": before["settings"],
         "eval_wall_s": round(before["wall_s"]["load"] + before["wall_s"]["evaluate"], 1),
         "eval_wall_s_methods": {m: round(t, 1) for m, t in before["wall_s"].get("methods", {}).items()}}
    # (EM key the issue names, prefix of the other figures, table, method)
    for key, base, table, method in (("direct_em", "direct", before, "direct"), ("rag_em", "rag", before, "rag"),
                                     ("agent_em_before", "agent_before", before, "agent"),
                                     ("agent_em_warm", "agent_warm", warm, "agent"),
                                     ("agent_em_after", "agent_after", after, "agent")):
        cell = table["methods"][method]["Avg"] if table and method in table["methods"] else None
        s[key] = cell["em"] if cell else None
        s[f"{key}_ci"] = cell["em_ci"] if cell else None
        for fig in ("acc", "f1", "searches", "response_tokens"):
            s[f"{base}_{fig}"] = cell[fig] if cell else None
            s[f"{base}_{fig}_ci"] = cell[f"{fig}_ci"] if cell else None
    gain = None
    if warm and after:
        em = {name: {r["id"]: r["em"] for r in read_jsonl(os.path.join(out, name, "records", "agent.jsonl"))}
              for name in ("warm", "after")}
        ids = sorted(em["warm"])
        if sorted(em["after"]) != ids:
            sys.exit(f"{out}/warm and {out}/after were evaluated on different questions")
        gain = paired_gain([em["after"][i] for i in ids], [em["warm"][i] for i in ids])
    s["rl_gain_over_warm_start"] = gain[0] if gain else None
    s["rl_gain_over_warm_start_ci"] = list(gain[1:]) if gain else None
    s["goals"] = {
        "eval_under_15_min": {"value": s["eval_wall_s"], "target": 900, "met": s["eval_wall_s"] <= 900},
        "rag_at_least_2x_direct": {"value": [s["rag_em"], s["direct_em"]],
                                   "met": s["rag_em"] >= 2 * s["direct_em"] and s["rag_em"] > 0},
        "rl_beats_untrained_beyond_interval": {
            "value": [s["agent_em_after"], s["agent_em_before_ci"]],
            "met": None if after is None or s["agent_em_before_ci"] is None
            else s["agent_em_after"] > s["agent_em_before_ci"][1]},
        # The goal above credits the warm start too; this one is RL's own part, paired over the same questions.
        "rl_beats_warm_start_beyond_interval": {
            "value": [s["rl_gain_over_warm_start"], s["rl_gain_over_warm_start_ci"]],
            "met": None if gain is None else gain[1] > 0},
    }
    with open(os.path.join(out, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(s, f, indent=1, sort_keys=True)
    print(json.dumps(s["goals"], indent=1))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/wiki_results")
