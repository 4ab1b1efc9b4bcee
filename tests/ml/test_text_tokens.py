import pytest
import torch

from ml.serving.encoders import create_encoder


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return create_encoder("mv-tiny-vit-minilm")


def test_word_features_are_compact_and_live_in_the_sentence_space(encoder):
    texts = ["red striped backpack. sturdy canvas bag", "", "mug"]
    tokens, mask = encoder.encode_text_tokens(texts)
    assert tokens.dtype == torch.float16 and mask.dtype == torch.bool
    words = encoder.tokenize(texts[:1])
    assert mask.sum(1).tolist() == [words.shape[1] - 2, 0, 1]  # [CLS] and [SEP] dropped, nothing for ""
    assert tokens.shape == (3, mask.sum(1).max(), encoder.embed_dim)
    norms = tokens.float().norm(dim=-1)
    torch.testing.assert_close(norms[mask], torch.ones(int(mask.sum())), atol=2e-3, rtol=0)
    assert norms[~mask].abs().max() == 0
    sentence = encoder.encode_texts(texts[:1])[0]
    mean_word = tokens[0][mask[0]].float().mean(0)
    assert float(torch.cosine_similarity(mean_word, sentence, dim=0)) > 0.8  # words point where their sentence does


def test_max_tokens_truncates(encoder):
    tokens, mask = encoder.encode_text_tokens(["one two three four five six seven"], max_tokens=4)
    assert tokens.shape[1] == 4 and mask.all()


def test_one_pass_gives_the_sentence_features_and_the_words_of_two(encoder):
    texts = ["red striped backpack. sturdy canvas bag", "", "mug"]
    sentences, tokens, mask = encoder.encode_text_and_tokens(texts)
    torch.testing.assert_close(sentences, encoder.encode_texts(texts), atol=1e-6, rtol=0)
    alone_tokens, alone_mask = encoder.encode_text_tokens(texts)
    assert torch.equal(tokens, alone_tokens) and torch.equal(mask, alone_mask)
