"""OUT/summary.json from OUT/before/table.json (and OUT/after/table.json when the trained agent was evaluated):
each figure is a test-set EM with its 95% bootstrap interval beside it (`*_ci`); a figure not measured is null."""

import json
import os
import sys


def main(out: str) -> None:
    def load(name):
        path = os.path.join(out, name, "table.json")
        if not os.path.isfile(path):
            return None
        with open(path, encoding="utf-8") as f:
            return json.load(f)

    before, after = load("before"), load("after")
    if before is None:
        sys.exit(f"{out}/before/table.json: missing (run docs/results/wiki/run.sh first)")
    s = {"questions": before["methods"]["direct"]["Avg"]["n"], "settings": before["settings"],
         "eval_wall_s": round(before["wall_s"]["load"] + before["wall_s"]["evaluate"], 1)}
    # (EM key the issue names, prefix of the other figures, table, method)
    for key, base, table, method in (("direct_em", "direct", before, "direct"), ("rag_em", "rag", before, "rag"),
                                     ("agent_em_before", "agent_before", before, "agent"),
                                     ("agent_em_after", "agent_after", after, "agent")):
        cell = table["methods"][method]["Avg"] if table else None
        s[key] = cell["em"] if cell else None
        s[f"{key}_ci"] = cell["em_ci"] if cell else None
        for fig in ("acc", "f1", "searches", "response_tokens"):
            s[f"{base}_{fig}"] = cell[fig] if cell else None
            s[f"{base}_{fig}_ci"] = cell[f"{fig}_ci"] if cell else None
    s["goals"] = {
        "eval_under_15_min": {"value": s["eval_wall_s"], "target": 900, "met": s["eval_wall_s"] <= 900},
        "rag_at_least_2x_direct": {"value": [s["rag_em"], s["direct_em"]],
                                   "met": s["rag_em"] >= 2 * s["direct_em"] and s["rag_em"] > 0},
        "rl_beats_untrained_beyond_interval": {
            "value": [s["agent_em_after"], s["agent_em_before_ci"]],
            "met": None if after is None else s["agent_em_after"] > s["agent_em_before_ci"][1]},
    }
    with open(os.path.join(out, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(s, f, indent=1, sort_keys=True)
    print(json.dumps(s["goals"], indent=1))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/wiki_results")
