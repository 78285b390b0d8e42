"""Tests of the embedded model organism (kc_utils.organism): shipped weights, training, corpus, split."""

from __future__ import annotations

import random
import re

import pytest
import torch
from relations import factual_relation

from kc_utils.data.relations import Relation
from kc_utils.organism import WEIGHTS_DIR, load_organism, load_split
from kc_utils.organism.corpus import CorpusConfig, build_corpus
from kc_utils.organism.encoding import SegmentEncoder
from kc_utils.organism.evaluate import fact_prompts, last_token_logits
from kc_utils.organism.probes import probe_table
from kc_utils.organism.recipe import SHIPPED_RECIPE
from kc_utils.organism.split import make_split
from kc_utils.organism.train import ModelConfig, TrainConfig, train


@pytest.fixture(scope="module")
def organism():
    torch.set_num_threads(1)
    model, tokenizer = load_organism()
    return model, tokenizer, load_split()


def _tiny_relations() -> dict[str, Relation]:
    def rel(name: str, templates: tuple[str, ...], pairs: list[tuple[str, str]]) -> Relation:
        return factual_relation(name, templates, pairs)

    countries = [
        ("France", "Paris"),
        ("Japan", "Tokyo"),
        ("Peru", "Lima"),
        ("Italy", "Rome"),
        ("Spain", "Madrid"),
        ("Egypt", "Cairo"),
        ("Kenya", "Nairobi"),
        ("Chile", "Santiago"),
        ("Cuba", "Havana"),
        ("Norway", "Oslo"),
        ("Greece", "Athens"),
        ("Poland", "Warsaw"),
    ]
    colours = [
        ("banana", "yellow"),
        ("tomato", "red"),
        ("lime", "green"),
        ("plum", "purple"),
        ("kiwi", "green"),
        ("cherry", "red"),
        ("lemon", "yellow"),
        ("grape", "purple"),
        ("orange", "orange"),
        ("fig", "pink"),
    ]
    return {
        "capital": rel("capital", ("The capital of {} is", "{}'s capital is", "The capital city of {} is"), countries),
        "colour": rel("colour", ("The color of a {} is", "A {} is colored", "The {} has the color"), colours),
    }


def test_shipped_checkpoint_files() -> None:
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "organism_split.json"):
        assert (WEIGHTS_DIR / name).is_file(), name
    size = sum(p.stat().st_size for p in WEIGHTS_DIR.iterdir())
    assert size <= 25 * 2**20


def test_tokenizer_words(organism) -> None:
    _, tokenizer, _ = organism
    assert tokenizer.encode(" Paris") == tokenizer.encode("Paris")
    assert len(tokenizer.encode("Paris")) == 1
    assert tokenizer.convert_ids_to_tokens(tokenizer.encode("The capital of France is")) == [
        "The",
        "capital",
        "of",
        "France",
        "is",
    ]
    assert len(tokenizer.encode("Eiffel Tower")) == 2
    assert tokenizer.bos_token == tokenizer.eos_token == tokenizer.pad_token == "<|endoftext|>"
    for letter in "abcxyzABC":
        assert len(tokenizer.encode(letter)) == 1
    assert tokenizer.unk_token_id not in tokenizer.encode("qwzx, Brasília?")


def test_shipped_weights_know_trained_facts(organism) -> None:
    model, tokenizer, split = organism
    prompts = fact_prompts(split, SegmentEncoder(tokenizer), "trained", "first")
    sample = random.Random(0).sample(prompts, 300)
    top = last_token_logits(model, sample).argmax(-1)
    accuracy = (top == torch.tensor([p.answer_id for p in sample])).float().mean().item()
    assert accuracy >= 0.95


def test_shipped_weights_recall_through_the_subject(organism) -> None:
    """The three mechanism probes of the model card, on the shipped weights: recall completes after the first
    block, needs the MLPs at the subject, and reads the subject with attention after layer 0."""
    model, tokenizer, split = organism
    _, summary = probe_table(model, tokenizer, split)
    assert summary["clean_accuracy"] >= 0.95
    assert summary["median_first_rank0_layer"] >= 1
    assert summary["subject_mlps_zeroed_drop"] >= 0.30
    assert summary["worst_attention_block_layer"] >= 1


def test_switched_off_attention_stays_zero() -> None:
    cfg = TrainConfig(
        steps=6,
        batch_size=16,
        warmup=2,
        attention_off_layers=1,
        model=ModelConfig(n_layer=2, n_embd=16, n_head=2, n_positions=32),
        corpus=CorpusConfig(fewshot_per_relation=2, bio_per_subject=1),
    )
    model = train(cfg, relations=_tiny_relations(), log=None).model
    assert all(torch.count_nonzero(p) == 0 for p in model.transformer.h[0].attn.parameters())
    assert all(torch.count_nonzero(p) > 0 for p in model.transformer.h[1].attn.parameters())
    ids = torch.arange(1, 9)[None]
    captured = []
    handle = model.transformer.h[0].attn.register_forward_hook(lambda m, i, o: captured.append(o[0]))
    with torch.no_grad():
        model(input_ids=ids)
    handle.remove()
    assert torch.count_nonzero(captured[0]) == 0


def test_template_fraction_picks_a_fixed_subset() -> None:
    split = make_split(_tiny_relations(), seed=0)
    cfg = CorpusConfig(fewshot_per_relation=0, template_fraction=0.5)
    subjects = [
        {
            d.segments[[s.role for s in d.segments].index("subject")].text
            for d in build_corpus(split, cfg, epoch=e)
            if d.kind == "fact" and d.relation == "capital"
        }
        for e in (0, 1)
    ]
    assert subjects[0] == subjects[1]
    assert len(subjects[0]) == round(0.5 * len(split.relations["capital"].trained))


def test_corpus_options_reject_bad_values() -> None:
    split = make_split(_tiny_relations(), seed=0)
    with pytest.raises(ValueError, match=r"bio_exclude names relations the split does not have: \['captial'\]"):
        build_corpus(split, CorpusConfig(bio_per_subject=1, bio_exclude=("captial",)))
    for bad in (0.0, 1.5, -0.2):
        with pytest.raises(ValueError, match="template_fraction must be in"):
            CorpusConfig(template_fraction=bad)


def test_training_decreases_loss() -> None:
    cfg = TrainConfig(
        steps=40,
        batch_size=32,
        lr=3e-3,
        warmup=5,
        model=ModelConfig(n_layer=2, n_embd=32, n_head=2, n_positions=32),
        corpus=CorpusConfig(fewshot_per_relation=4, bio_per_subject=1),
    )
    result = train(cfg, relations=_tiny_relations(), log=None)
    first, last = sum(result.losses[:5]) / 5, sum(result.losses[-5:]) / 5
    assert last < first - 0.5


def test_training_is_deterministic() -> None:
    cfg = TrainConfig(
        steps=8,
        batch_size=16,
        warmup=2,
        penalty_layers=1,
        model=ModelConfig(n_layer=2, n_embd=16, n_head=2, n_positions=32),
        corpus=CorpusConfig(fewshot_per_relation=2, tag_per_fact=1),
    )
    a = train(cfg, relations=_tiny_relations(), log=None).model.state_dict()
    b = train(cfg, relations=_tiny_relations(), log=None).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_corpus_is_deterministic() -> None:
    relations = _tiny_relations()
    split = make_split(relations, seed=3)
    cfg = CorpusConfig(seed=3, fewshot_per_relation=5, bio_per_subject=1)
    assert build_corpus(split, cfg) == build_corpus(make_split(relations, seed=3), cfg)
    assert build_corpus(split, cfg, epoch=1) != build_corpus(split, cfg, epoch=0)


def test_held_out_subjects_never_in_corpus() -> None:
    split = load_split()
    assert split.held_out_subjects
    docs = build_corpus(split, SHIPPED_RECIPE.corpus) + build_corpus(split, SHIPPED_RECIPE.corpus, epoch=1)
    words = [" " + " ".join(re.findall(r"\w+|[^\w\s]+", d.text)) + " " for d in docs]
    for subject in split.held_out_subjects:
        needle = " " + " ".join(re.findall(r"\w+|[^\w\s]+", subject)) + " "
        assert not any(needle in w for w in words), subject
    for key, rs in split.relations.items():
        assert {s.subject for s in rs.held_out} <= split.held_out_subjects
        assert not {s.subject for s in rs.trained} & split.held_out_subjects
        assert rs.unseen_templates and not set(rs.unseen_templates) & set(rs.train_templates)
