"""Tokenizer loading (HF `tokenizers` behind `PreTrainedTokenizerFast`) and stop strings as token-id sequences.

A stop string such as `</search>` is one added token in our world tokenizer but several BPE pieces in SmolLM2/Qwen,
and the pieces depend on what precedes it: after a space the first piece may be `Ġ</` instead of `</`, and glued to a
word BPE may merge the word's last letters with `<`. The decode loop compares the last generated ids with each stop
id sequence, so `stop_id_sequences` tokenizes the stop after a set of preceding texts that cover what the model
writes before a stop (a word, a space, punctuation, a newline, a digit, a non-ASCII letter) and, for each, keeps the
shortest suffix of ids whose decoded text ends with the stop string. Every distinct suffix is returned. A suffix whose
first piece also carries preceding characters (e.g. `y</`) is kept too: the model produces it in that context.
Non-canonical tokenizations the model could sample are not enumerated; a host-side text check
(`protocol.truncate_at_stop`) remains the backstop.
"""

from __future__ import annotations

import os
from typing import Iterable, Sequence

import numpy as np

from searchr2_jax.text.protocol import CHAT_END_OF_TURN, STOP_STRINGS, Segment

# Texts the model plausibly writes right before a stop string (see module docstring).
STOP_CONTEXTS = (
    "",
    " ",
    "  ",
    "\n",
    "\n\n",
    "a",
    "query",
    "word ",
    "Paris",
    "1990",
    "7 ",
    ".",
    "?",
    ")",
    '"',
    "'",
    ",",
    "-",
    "é",
    "北京",
    "<search> who is it",
    "<answer> Beijing",
    "<answer> Beijing ",
)


def load_tokenizer(path: str | os.PathLike):
    """A `transformers` fast tokenizer from a directory (tokenizer.json + config) or a bare tokenizer.json file."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    path = os.fspath(path)
    if os.path.isdir(path):
        if not os.path.exists(os.path.join(path, "tokenizer.json")) and not os.path.exists(
            os.path.join(path, "tokenizer_config.json")
        ):
            raise FileNotFoundError(f"{path}: no tokenizer.json or tokenizer_config.json in this directory")
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: tokenizer file not found")
    return PreTrainedTokenizerFast(tokenizer_file=path)


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def _decode(tokenizer, ids: Sequence[int]) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)


def stop_id_sequences(
    tokenizer, stop_string: str, contexts: Iterable[str] = STOP_CONTEXTS
) -> list[tuple[int, ...]]:
    """Every distinct shortest id suffix that ends with `stop_string` when it follows one of `contexts`."""
    found: set[tuple[int, ...]] = set()
    for ctx in contexts:
        ids = _encode(tokenizer, ctx + stop_string)
        for k in range(1, len(ids) + 1):
            if _decode(tokenizer, ids[-k:]).endswith(stop_string):
                found.add(tuple(ids[-k:]))
                break
        else:  # the tokenizer normalizes the stop away (e.g. lowercases): nothing can match it
            raise ValueError(f"stop string {stop_string!r} does not survive encode/decode after {ctx!r}")
    return sorted(found, key=lambda s: (len(s), s))


def _with_merged_tails(tokenizer, sequences: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """Adds the variants whose last token runs past the stop string: a model that writes `</answer></think>` may
    emit `answer` + `></`, and the stop must fire on that token, not after it (SmolLM2 does this). Each variant's last
    token is replaced by every vocabulary token whose text starts with that token's text."""
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))], skip_special_tokens=False,
                                   clean_up_tokenization_spaces=False)
    out = list(sequences)
    for seq in sequences:
        last = texts[seq[-1]]
        out += [seq[:-1] + (i,) for i, t in enumerate(texts) if len(t) > len(last) and t.startswith(last)]
    return sorted(set(out), key=lambda s: (len(s), s))


def eos_token_ids(tokenizer) -> list[int]:
    """EOS and chat end-of-turn ids that exist in this tokenizer (`<|im_end|>`, `<|endoftext|>`, eos_token)."""
    ids = []
    for tok in (tokenizer.eos_token, CHAT_END_OF_TURN, "<|endoftext|>"):
        if tok is None:
            continue
        tid = tokenizer.convert_tokens_to_ids(tok)
        if tid is not None and tid != tokenizer.unk_token_id and tid not in ids:
            ids.append(int(tid))
    return ids


def all_stop_sequences(
    tokenizer, stop_strings: Sequence[str] = STOP_STRINGS, include_eos: bool = True
) -> dict[str, list[tuple[int, ...]]]:
    """Stop string -> its id sequences; with `include_eos`, each EOS/end-of-turn token as a one-id sequence."""
    out = {s: _with_merged_tails(tokenizer, stop_id_sequences(tokenizer, s)) for s in stop_strings}
    if include_eos:
        for tid in eos_token_ids(tokenizer):
            out[tokenizer.convert_ids_to_tokens(tid)] = [(tid,)]
    return out


def tokenize_segments(tokenizer, segments: Sequence[Segment]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of the concatenated segments and a loss mask (1 on ids from `generated` segments).

    Each segment is tokenized on its own, the way the rollout appends turns and observations, so a token never
    straddles a model/tool boundary and the mask is exact.
    """
    ids: list[int] = []
    mask: list[int] = []
    for seg in segments:
        piece = _encode(tokenizer, seg.text)
        ids.extend(piece)
        mask.extend([int(seg.generated)] * len(piece))
    return np.asarray(ids, dtype=np.int32), np.asarray(mask, dtype=np.int32)
