"""The world BPE: tags and chat tokens are single ids, text round-trips, loads as any HF tokenizer."""

import pytest

from searchr2_jax.data.demos import DemoWriter
from searchr2_jax.data.synthetic import WorldConfig, generate_world
from searchr2_jax.data.world_tokenizer import SPECIAL_TOKENS, train_world_tokenizer
from searchr2_jax.text.protocol import PROTOCOL_TAGS
from searchr2_jax.text.tokenizer import load_tokenizer, tokenize_segments


@pytest.fixture(scope="module")
def world():
    return generate_world(WorldConfig.tiny())


@pytest.fixture(scope="module")
def tok_dir(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    train_world_tokenizer(world, 1024, str(out))
    return out


def test_saved_and_reloaded(tok_dir):
    from transformers import PreTrainedTokenizerFast

    assert (tok_dir / "tokenizer.json").exists()
    tok = load_tokenizer(tok_dir)
    also = PreTrainedTokenizerFast(tokenizer_file=str(tok_dir / "tokenizer.json"))
    assert len(tok) == len(also) == 1024
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|pad|>"


def test_tags_and_specials_are_single_tokens_anywhere(tok_dir):
    tok = load_tokenizer(tok_dir)
    for t in PROTOCOL_TAGS + SPECIAL_TOKENS:
        for text in (t, "word" + t, " " + t + "x"):
            ids = tok.encode(text, add_special_tokens=False)
            assert tok.convert_tokens_to_ids(t) in ids, (t, text)
    # protocol tags survive skip_special_tokens (Search-R1 decodes that way); chat specials do not
    text = "<think>a</think><search>q</search><|im_end|>"
    assert tok.decode(tok.encode(text, add_special_tokens=False), skip_special_tokens=True) == \
        "<think>a</think><search>q</search>"


def test_demo_text_round_trips_and_is_compact(world, tok_dir):
    tok = load_tokenizer(tok_dir)
    demos = DemoWriter(world).demos(world.questions[:40], seed=0)
    for d in demos:
        segs = d.sft_segments()
        ids, mask = tokenize_segments(tok, segs)
        assert tok.decode(ids.tolist()) == "".join(s.text for s in segs)
        assert 0 < mask.sum() < len(ids)
    text = "".join(s.text for s in demos[0].response)
    assert len(tok.encode(text)) < len(text) / 2.5  # BPE learned the world's words and names


def test_too_small_vocab_rejected(world):
    with pytest.raises(ValueError, match="vocab_size"):
        train_world_tokenizer(world, 100)


@pytest.mark.slow
def test_held_out_names_are_spelled_with_tokens_that_training_shows():
    """A token only held-out names use is never trained, and the model could not copy it. The BPE learns syllables
    from random names, so (nearly) every token of a test question also occurs in the training demonstrations."""
    world = generate_world()
    tok = train_world_tokenizer(world, 768)
    seen = set()
    for d in DemoWriter(world).demos(world.splits["train"], seed=0):
        seen |= set(tokenize_segments(tok, d.sft_segments())[0].tolist())
    test = world.splits["test"]
    unseen = [q for q in test if set(tok.encode(" " + q.question, add_special_tokens=False)) - seen]
    assert len(unseen) <= 0.02 * len(test), len(unseen)
    # names are not whole tokens
    names = [w for w in world.name_words() if len(w) >= 6]
    assert sum(len(tok.encode(" " + w, add_special_tokens=False)) == 1 for w in names) <= 0.01 * len(names)
