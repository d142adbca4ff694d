"""The learning experiment: does RL lift EM over a shared warm start, and does Search-R2 beat Search-R1?

On the synthetic world split by region (held-out questions can only be answered by searching), one warm start (a
small from-scratch model: copy drills, then demonstrations under fresh names; cached by a hash of its settings) is
shared by every arm; then
the baselines and the RL arms, each evaluated greedily, Actor only, on the held-out test questions:

  direct       the warm start answers at once (its response is forced to open with <answer>)
  rag          one retrieval for the question itself, then the answer turn
  majority     each question template's most common training answer (no model, no search)
  warm_start   the warm start as a search agent (the protocol, greedy)
  search_r1    GRPO, refiner off, outcome reward (EM)
  search_r2    GRPO, Meta-Refiner on, hybrid reward, meta-actions trained jointly

  python launch/experiment.py --config=configs/learning.py --out=/tmp/learning
  python launch/experiment.py --config=configs/learning.py:quick=1 --out=/tmp/learning_quick   # ~2 min

Switches: quick, steps (RL steps per arm), seeds (RL seeds, e.g. 0+1), arms (e.g. search_r1+search_r2+ppo),
sft_steps, test_examples, stop_early (sft.stop_early_fraction: the demonstrator's share of multi-hop answers one hop
short, with the bridge entity).
"""

from searchr2_jax.config import apply_variant, base_config, parse_arg


def get_config(arg=None):
    a = parse_arg(arg, quick=False, steps=40, seeds="0+1", arms="search_r1+search_r2", sft_steps=1400,
                  test_examples=500, stop_early=0.0)
    c = base_config()
    c.seed = 0  # the warm start's; each RL arm runs with its own seed
    c.data.world = dict(seed=0)  # the default world: ~2k entities in three regions, 10k questions
    c.data.eval_split = "dev"  # learning curves are drawn on dev; the final figures on test
    c.data.eval_examples = 128
    # Names are spelled in syllables (data/world_tokenizer.py); at 768 entries nearly every syllable token a
    # held-out name uses also occurs in training text, at 2,048 about half of the test questions have one that never does.
    c.model.vocab_size = 768
    # 128 wide and 2 layers: the smallest model whose warm start copies held-out names (question -> query,
    # passage -> next query) once the tokenizer spells names in syllables.
    c.model.init = dict(hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=32,
                        intermediate_size=384, rope_theta=10000.0, max_position_embeddings=2048)
    c.retrieval.backend = "bm25"
    c.retrieval.k = 2  # the paper takes 3: 2 keeps a 3-hop conversation within the CPU budget
    c.rollout.update(dict(slots=32, max_turns=4, max_prompt_tokens=320, max_response_tokens=640,
                          max_obs_tokens=160, topk=2, segment_steps=32,
                          temperature=0.8))  # < 1: more of a small warm start's samples stay on-protocol
    c.refiner.update(dict(max_revisions=1, margin=0.0, prompt="followup"))
    c.reward.judge = "oracle"  # the world knows which passages are gold
    c.sft.update(dict(steps=a.sft_steps, batch_size=16, seq_len=768, flawed_fraction=0.15, refiner_fraction=0.1,
                      fresh_names=True,  # copy names, never memorise them: held-out names are new
                      copy_steps=600, copy_batch_size=32,  # short copy drills first: copying heads form there
                      stop_early_fraction=a.stop_early))
    c.sft.optim.learning_rate = 3e-3
    c.rl.group_size = 5
    c.rl.loss.loss_agg = "token-mean"
    # 100x the paper's 1e-6: a 2-layer model has to move within tens of RL steps, not hundreds.
    c.optim.update(dict(learning_rate=1e-4, warmup_ratio=0.05, schedule="constant"))
    c.train.update(dict(steps=a.steps, prompts_per_step=8, micro_batches=2, log_every=1, eval_every=20,
                        ckpt_every=20, keep_checkpoints=2, progress=True, diagnostics_every=20,
                        diagnostics_prompts=32))
    c.mesh.update(dict(data=1, fsdp=1, tensor=1))
    c.experiment.update(dict(arms=tuple(a.arms.split("+")), seeds=tuple(int(s) for s in a.seeds.split("+")),
                             test_examples=a.test_examples))
    if a.quick:  # the whole pipeline in about two minutes, for the tests: outputs, not figures
        c.data.world = dict(seed=0, num_people=120, num_companies=30, num_cities=30, num_countries=6,
                            num_universities=8, num_distractors=10, num_questions=600)
        c.data.eval_examples = 8
        c.model.vocab_size = 1024
        c.model.init = dict(c.model.init, hidden_size=32, intermediate_size=64, num_heads=2, num_kv_heads=1,
                            head_dim=16)
        c.rollout.update(dict(slots=8, max_response_tokens=256, max_obs_tokens=96))
        c.sft.update(dict(steps=4, batch_size=4, seq_len=384, copy_steps=2, copy_batch_size=4))
        c.rl.group_size = 2
        c.train.update(dict(steps=2, prompts_per_step=2, micro_batches=1, eval_every=1, ckpt_every=1,
                            diagnostics_every=2, diagnostics_prompts=4))
        c.experiment.update(dict(seeds=(0, 1), test_examples=12, eval_batch_size=16, bootstrap=50))
    return apply_variant(c, "search_r2")
