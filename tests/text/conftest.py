import pytest

from searchr2_jax.data.synthetic import WorldConfig, generate_world
from searchr2_jax.data.world_tokenizer import train_world_tokenizer


@pytest.fixture(scope="session")
def tiny_world():
    return generate_world(WorldConfig.tiny())


@pytest.fixture(scope="session")
def world_tokenizer_dir(tiny_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("world_tok")
    train_world_tokenizer(tiny_world, 1024, str(out))
    return out


@pytest.fixture(scope="session")
def plain_bpe(tiny_world):
    """A byte-level BPE *without* protocol tags as added tokens, so stop strings are multi-token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    texts = [p["contents"] for p in tiny_world.passages] + ["<search> a </search> <answer> b </answer>"] * 50
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=700, special_tokens=["<|im_end|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>")
