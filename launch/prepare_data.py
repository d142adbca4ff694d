"""Write the synthetic world (corpus, QA splits, tokenizer) and/or convert QA files to array_record.

  python launch/prepare_data.py --out_dir=/tmp/world                       # default world (~2k entities, 10k questions)
  python launch/prepare_data.py --out_dir=/tmp/world --num_people=200 --num_questions=500 --vocab_size=2048
  python launch/prepare_data.py --out_dir=/tmp/qa --qa_files=train=nq/train.jsonl,hotpotqa/train.jsonl \
      --qa_files=test=nq/test.jsonl --world=false                          # array_record copy of real QA files
  python launch/prepare_data.py --out_dir=/tmp/qa --wiki --world=false       # the Wikipedia-summaries QA set

Outputs under --out_dir: `world/{corpus,train,dev,test}.jsonl`, `world/world.json`, `tokenizer/` (HF fast
tokenizer), `tfds/` (array_record builders: `synthetic` for the world splits, `qa` for --qa_files), and with --wiki
`wikisum/{corpus,train,dev,test}.jsonl` (data/wiki_qa.py: 500 dev and 500 test questions, FlashRAG jsonl).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

from absl import app, flags, logging

from searchr2_jax.data import synthetic
from searchr2_jax.data.tfds_builders import prepare_array_record

_OUT = flags.DEFINE_string("out_dir", None, "Directory to write into.", required=True)
_WORLD = flags.DEFINE_bool("world", True, "Generate the synthetic world.")
_SEED = flags.DEFINE_integer("seed", 0, "World seed.")
_PEOPLE = flags.DEFINE_integer("num_people", synthetic.WorldConfig.num_people, "People in the world.")
_COMPANIES = flags.DEFINE_integer("num_companies", synthetic.WorldConfig.num_companies, "Companies.")
_CITIES = flags.DEFINE_integer("num_cities", synthetic.WorldConfig.num_cities, "Cities.")
_COUNTRIES = flags.DEFINE_integer("num_countries", synthetic.WorldConfig.num_countries, "Countries.")
_UNIS = flags.DEFINE_integer("num_universities", synthetic.WorldConfig.num_universities, "Universities.")
_DISTRACTORS = flags.DEFINE_integer("num_distractors", synthetic.WorldConfig.num_distractors, "Namesake people.")
_QUESTIONS = flags.DEFINE_integer("num_questions", synthetic.WorldConfig.num_questions, "Questions in all splits.")
_VOCAB = flags.DEFINE_integer("vocab_size", 4096, "World tokenizer vocabulary (0: skip the tokenizer).")
_ARRAY_RECORD = flags.DEFINE_bool("array_record", True, "Also write array_record copies of the QA splits.")
_WIKI = flags.DEFINE_bool("wiki", False, "Write the Wikipedia-summaries QA set and its corpus (data/wiki_qa.py).")
_QA_FILES = flags.DEFINE_multi_string(
    "qa_files", [], "SPLIT=path[,path...] of Search-R1 parquet / FlashRAG jsonl files to convert to array_record.")


def _parse_qa_files(specs: list[str]) -> dict[str, list[str]]:
    files: dict[str, list[str]] = {}
    for spec in specs:
        split, sep, paths = spec.partition("=")
        if not sep or not split or not paths:
            raise app.UsageError(f"--qa_files={spec!r}: expected SPLIT=path[,path...]")
        files.setdefault(split, []).extend(p for p in paths.split(",") if p)
    return files


def main(argv):
    del argv
    out = _OUT.value
    os.makedirs(out, exist_ok=True)
    summary: dict[str, object] = {}
    if _WORLD.value:
        cfg = synthetic.WorldConfig(
            seed=_SEED.value, num_people=_PEOPLE.value, num_companies=_COMPANIES.value, num_cities=_CITIES.value,
            num_countries=_COUNTRIES.value, num_universities=_UNIS.value, num_distractors=_DISTRACTORS.value,
            num_questions=_QUESTIONS.value)
        t0 = time.perf_counter()
        world = synthetic.generate_world(cfg)
        paths = synthetic.write_world(world, os.path.join(out, "world"))
        summary["world"] = {"seconds": round(time.perf_counter() - t0, 2), "entities": len(world.entities),
                            "passages": len(world.passages), **{k: len(v) for k, v in world.splits.items()},
                            "config": dataclasses.asdict(cfg)}
        logging.info("world written: %s", paths)
        if _VOCAB.value:
            from searchr2_jax.data.world_tokenizer import train_world_tokenizer

            t0 = time.perf_counter()
            tok = train_world_tokenizer(world, _VOCAB.value, os.path.join(out, "tokenizer"), seed=_SEED.value)
            summary["tokenizer"] = {"vocab": len(tok), "seconds": round(time.perf_counter() - t0, 2)}
        if _ARRAY_RECORD.value:
            files = {s: [paths[s]] for s in ("train", "dev", "test") if world.splits[s]}
            builder = prepare_array_record("synthetic", files, os.path.join(out, "tfds"), data_source="synthetic")
            summary["synthetic_array_record"] = builder.data_dir
    if _WIKI.value:
        from searchr2_jax.data.wiki_qa import prepare_wiki_qa

        summary["wikisum"] = prepare_wiki_qa(os.path.join(out, "wikisum"))
    qa_files = _parse_qa_files(_QA_FILES.value)
    if qa_files:
        builder = prepare_array_record("qa", qa_files, os.path.join(out, "tfds"))
        summary["qa_array_record"] = builder.data_dir
    with open(os.path.join(out, "prepare_data.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    app.run(main)
