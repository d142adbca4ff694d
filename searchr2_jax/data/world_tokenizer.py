"""A small byte-level BPE tokenizer trained on the synthetic world, for a from-scratch tiny model.

Protocol tags are added tokens (one id each, matched even when glued to a word, and *not* special, so decoding with
`skip_special_tokens=True` keeps them); `<|endoftext|>`, `<|im_start|>`, `<|im_end|>`, `<|pad|>` are special tokens.
The directory written by `train_world_tokenizer` loads with `AutoTokenizer.from_pretrained(dir)` or
`PreTrainedTokenizerFast(tokenizer_file=dir/tokenizer.json)`, and carries a ChatML chat template (Qwen style) so the
chat code path can be exercised with it. Byte-level BPE round-trips any text exactly.
"""

from __future__ import annotations

import os
import random
from typing import Iterator

from searchr2_jax.data.synthetic import Renamer, World
from searchr2_jax.text.protocol import INVALID_ACTION_MESSAGE, PROMPT_TEMPLATE, PROTOCOL_TAGS

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>")
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def world_texts(world: World, num_demos: int = 2000, seed: int = 0) -> Iterator[str]:
    """The training text: passages, questions, the prompt template, and a sample of demos and refiner prompts, with
    every name word replaced by a fresh random name of the same syllables.

    A name seen whole in this text would become one token, and a token that only held-out entities use is never
    trained: the model could not copy a held-out name out of the question or a passage. With fresh names the BPE
    learns the syllables instead, which every name of every region is made of."""
    from searchr2_jax.data.demos import DemoWriter  # demos imports this package's modules; keep import local

    rng = random.Random(seed)
    rename = Renamer(world.name_words(), rng, consistent=False)

    def texts() -> Iterator[str]:
        yield PROMPT_TEMPLATE
        yield INVALID_ACTION_MESSAGE
        for p in world.passages:
            yield p["contents"]
        for q in world.questions:
            yield q.question
        sample = rng.sample(world.questions, min(num_demos, len(world.questions)))
        for demo in DemoWriter(world).demos(sample, seed=seed):
            # The prompt opens every training sequence: as often here as there, so its words become whole tokens.
            yield demo.prompt
            yield "".join(s.text for s in demo.response)
            yield "".join(s.text for s in demo.refiner_segments())

    for text in texts():
        yield rename(text)


def train_world_tokenizer(world: World, vocab_size: int = 4096, out_dir: str | None = None, seed: int = 0):
    """Train the BPE on `world` and return a `PreTrainedTokenizerFast`; with `out_dir`, save it there too
    (tokenizer.json, tokenizer_config.json with the chat template)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 300:
        raise ValueError(f"vocab_size {vocab_size} is below the 256 bytes + special tokens a byte-level BPE needs")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(PROTOCOL_TAGS),
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(world_texts(world, seed=seed), trainer)
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in PROTOCOL_TAGS])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        bos_token=None,
        unk_token=None,
        additional_special_tokens=["<|endoftext|>", "<|im_start|>"],
        model_max_length=8192,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHATML_TEMPLATE
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
        fast.save_pretrained(out_dir)
    return fast
