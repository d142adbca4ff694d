"""Tokenizer loading, stop strings as id sequences, segment masks, and render -> tokenize -> decode -> parse."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from searchr2_jax.retrieval.types import Passage
from searchr2_jax.text import protocol as P
from searchr2_jax.text import tokenizer as T


def _ends_with_any(ids, seqs):
    return any(len(ids) >= len(s) and tuple(ids[-len(s):]) == s for s in seqs)


def test_world_tokenizer_loads_both_ways_and_tags_are_single_ids(world_tokenizer_dir):
    from_dir = T.load_tokenizer(world_tokenizer_dir)
    from_file = T.load_tokenizer(world_tokenizer_dir / "tokenizer.json")
    text = "x</search> <answer>Tamsu</answer><|im_end|>"
    assert from_dir.encode(text, add_special_tokens=False) == from_file.encode(text, add_special_tokens=False)
    stops = T.all_stop_sequences(from_dir)
    assert all(len(seqs) == 1 and len(seqs[0]) == 1 for seqs in stops.values())
    assert "<|im_end|>" in stops and "<|endoftext|>" in stops
    with pytest.raises(FileNotFoundError):
        T.load_tokenizer(world_tokenizer_dir / "missing.json")


def test_multi_token_stops_cover_every_context(plain_bpe):
    seqs = T.stop_id_sequences(plain_bpe, "</search>")
    assert max(len(s) for s in seqs) > 1  # really multi-token in this tokenizer
    assert len(seqs) > 1  # and context dependent (e.g. after a space vs glued to a word)
    for s in seqs:
        assert plain_bpe.decode(list(s)).endswith("</search>")
    # Contexts outside the built-in list: a stop after them is still matched by a sequence when the tokenizer
    # keeps the stop's pieces apart from the preceding word (true of byte-level BPE at a '<').
    for ctx in ["<think> go </think>\n<search> Kalo Vireth born", "query 2", "Tamsu country ", "x\n"]:
        ids = plain_bpe.encode(ctx + "</search>", add_special_tokens=False)
        assert _ends_with_any(ids, seqs), ctx


def test_stop_fires_on_a_token_that_runs_past_the_stop():
    # SmolLM2 writes "</answer></think>" as ... "answer" + "></": the stop must fire on "></", not at a later stop.
    from searchr2_jax.models.gguf_import import ensure_smollm2

    tok = T.load_tokenizer(ensure_smollm2())
    stops = T.all_stop_sequences(tok)["</answer>"]
    ids = tok.encode("<answer> Nythfux </answer></think>", add_special_tokens=False)
    k = next(k for k in range(1, len(ids) + 1) if "</answer>" in tok.decode(ids[:k]))
    assert tok.decode(ids[k - 1:k]) == "></"  # the case this test is about
    assert _ends_with_any(ids[:k], stops)
    for s in stops:  # every variant contains the stop, completed by its last token
        assert "</answer>" in tok.decode(list(s)) and "</answer>" not in tok.decode(list(s[:-1]))


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8", exclude_characters="<>"), max_size=20))
def test_stop_sequences_match_after_arbitrary_text(plain_bpe_cached, ctx):
    tok, seqs = plain_bpe_cached
    ids = tok.encode("<search> " + ctx + "</search>", add_special_tokens=False)
    # Either a listed sequence matches, or BPE merged the stop's first piece with the preceding text; then the
    # shortest suffix that decodes to the stop must begin with that merged piece (documented limitation).
    if not _ends_with_any(ids, seqs):
        k = next(k for k in range(1, len(ids) + 1) if tok.decode(ids[-k:]).endswith("</search>"))
        assert not tok.decode(ids[-k:]).startswith("</search>")


@pytest.fixture(scope="module")
def plain_bpe_cached(plain_bpe):
    return plain_bpe, T.stop_id_sequences(plain_bpe, "</search>")


def test_stop_that_does_not_survive_decode_is_an_error():
    class Lowercasing:
        def encode(self, text, add_special_tokens=False):
            return [ord(c) for c in text.lower()]

        def decode(self, ids, **kw):
            return "".join(map(chr, ids))

    with pytest.raises(ValueError, match="does not survive"):
        T.stop_id_sequences(Lowercasing(), "</SEARCH>")


def test_tokenize_segments_masks_only_generated(world_tokenizer_dir):
    tok = T.load_tokenizer(world_tokenizer_dir)
    segs = [P.Segment("prompt text ", False), P.Segment("<think> a </think>", True), P.Segment("\n\n<information>", False)]
    ids, mask = T.tokenize_segments(tok, segs)
    n0 = len(tok.encode("prompt text ", add_special_tokens=False))
    n1 = len(tok.encode("<think> a </think>", add_special_tokens=False))
    assert ids.dtype == np.int32 and mask.tolist() == [0] * n0 + [1] * n1 + [0] * (len(ids) - n0 - n1)
    assert tok.decode(ids.tolist()) == "".join(s.text for s in segs)


names = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="<>\n\x00"), min_size=1, max_size=25)


@settings(max_examples=40, deadline=None)
@given(query=names.filter(str.strip), answer=names.filter(str.strip), titles=st.lists(names, min_size=1, max_size=3),
       texts=st.lists(names, min_size=3, max_size=3))
def test_round_trip_render_tokenize_decode_parse(world_tok_cached, query, answer, titles, texts):
    tok = world_tok_cached
    passages = [Passage(str(i), t.strip() or "T", x.strip() or "x") for i, (t, x) in enumerate(zip(titles, texts))]
    turn1 = f"<think> I should search. </think>\n<search> {query} </search>"
    info = P.render_information(passages)
    turn2 = f"<think> found it </think>\n<answer> {answer} </answer>"
    prompt = P.build_prompt("Who is it?")
    full = prompt + turn1 + info + turn2
    decoded = tok.decode(tok.encode(full, add_special_tokens=False), skip_special_tokens=True)
    assert decoded == full
    response = decoded[len(prompt):]
    steps = P.segment_trajectory(response)
    assert len(steps) == 2
    assert P.parse_turn(steps[0].assistant) == P.TurnParse("search", query=query.strip())
    for p in passages:
        assert f"(Title: {p.title}) {p.text}" in steps[0].tool
    assert P.parse_turn(steps[1].assistant) == P.TurnParse("answer", answer=answer.strip())
    assert P.extract_answer(response) == answer.strip()


@pytest.fixture(scope="module")
def world_tok_cached(world_tokenizer_dir):
    return T.load_tokenizer(world_tokenizer_dir)


def test_chat_prompt_through_world_tokenizer(world_tok_cached):
    prompt = P.build_prompt("Where was Kalo born", world_tok_cached, chat=True)
    assert prompt.startswith("<|im_start|>user\nAnswer the given question.")
    assert prompt.endswith("Question: Where was Kalo born?\n<|im_end|>\n<|im_start|>assistant\n")
    refiner = P.build_refiner_prompt("q", [P.Step("<answer> a </answer>")], 4, tokenizer=world_tok_cached, chat=True)
    assert refiner.endswith("Problematic step index (0 = no issue):<|im_end|>\n<|im_start|>assistant\n")
