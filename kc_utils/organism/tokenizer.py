"""A word-level tokenizer for the organism, built offline with the ``tokenizers`` library.

Every word (``\\w+``), every run of punctuation and the possessive ``'s`` is one token, and spaces carry no
information, so ``" Paris"`` and ``"Paris"`` are the same single token and ``"The capital of France is"`` is
five word tokens. Multi-word entities stay multi-token (``"Eiffel Tower"`` is two tokens). A word missing from
the vocabulary falls back to WordPiece letter pieces (``"zyx" -> z ##y ##x``) instead of an unknown token;
every single letter, digit and punctuation mark is in the vocabulary.

``<|endoftext|>`` is the BOS, EOS and padding token, as in GPT-2; like GPT-2's tokenizer it is not added
automatically, and the training corpus always starts with it, so prompts tokenized with a BOS in front
(TransformerLens' default) are in distribution.
"""

from __future__ import annotations

import string
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

__all__ = ["BOS", "UNK", "build_tokenizer", "save_tokenizer", "word_pieces"]

BOS = "<|endoftext|>"
"""Beginning/end of text and padding token."""
UNK = "<|unk|>"
"""Unknown token (only for characters outside the alphabet of the vocabulary)."""

_PRE_TOKENIZER = pre_tokenizers.Sequence(
    [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(r"'s\b|\w+|[^\w\s]+"), behavior="isolated")]
)


def word_pieces(text: str) -> list[str]:
    """The pre-tokenized pieces of ``text`` (words and punctuation runs), as the tokenizer splits it."""
    return [piece for piece, _ in _PRE_TOKENIZER.pre_tokenize_str(normalizers.NFC().normalize_str(text))]


def build_tokenizer(texts: Iterable[str], model_max_length: int = 128) -> PreTrainedTokenizerFast:
    """Build the tokenizer whose vocabulary holds every word and punctuation run of ``texts``.

    The vocabulary is ordered deterministically: special tokens, single characters, letter pieces, then the
    words by decreasing frequency (ties alphabetically).

    Args:
        texts: every string the model should know as whole words (corpus, templates, subjects, objects).
        model_max_length: the context length recorded in the tokenizer config.
    """
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(word_pieces(text))
    chars = sorted(set(string.ascii_letters + string.digits + string.punctuation) | {c for w in counts for c in w})
    vocab_list = [BOS, UNK, *chars, *(f"##{c}" for c in chars)]
    seen = set(vocab_list)
    for word, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if word not in seen:
            vocab_list.append(word)
            seen.add(word)
    vocab = {token: i for i, token in enumerate(vocab_list)}

    backend = Tokenizer(models.WordPiece(vocab=vocab, unk_token=UNK, max_input_chars_per_word=100))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = _PRE_TOKENIZER
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=BOS,
        pad_token=BOS,
        unk_token=UNK,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, directory: str | Path) -> None:
    """Save as a standard Hugging Face tokenizer (tokenizer.json, tokenizer_config.json, ...)."""
    tokenizer.save_pretrained(str(directory))
