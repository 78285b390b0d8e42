"""Device placement on CPU: the planner over two simulated devices (meta-device models, no memory used), and a
CPU-only device map dispatched through accelerate, on which the edge engine gives the plain model's results.

What this does not show: a split over two real GPUs (none here). The engine's cross-device moves are ``.to``
calls that are no-ops on one device; a two-GPU run is the missing check (see kc_utils.placement).
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, LlamaConfig

from kc_utils.organism.paths import WEIGHTS_DIR
from kc_utils.placement import (
    PlacementError,
    auto_device_map,
    check_device_map,
    meta_model,
    parse_memory,
    placement_units,
    plan_device_map,
)


@pytest.fixture(scope="module")
def organism_units():
    model = meta_model(AutoConfig.from_pretrained(WEIGHTS_DIR))
    assert all(p.device.type == "meta" for p in model.parameters())
    return placement_units(model), sum(p.numel() * 4 for p in model.parameters())


def _llama_units(n_layers: int = 3):
    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=n_layers, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=False,
    )  # fmt: skip
    return placement_units(meta_model(config))


def test_units_are_the_blocks_and_the_modules_around_them_in_forward_order(organism_units):
    units, n_bytes = organism_units
    names = [u.name for u in units]
    assert names == [
        "transformer.wte", "transformer.wpe", "transformer.drop",
        *[f"transformer.h.{i}" for i in range(4)],
        "transformer.ln_f", "lm_head",
    ]  # fmt: skip
    lm_head = units[-1]
    assert lm_head.tied_to == "transformer.wte" and lm_head.n_bytes == 0  # GPT-2 unembeds with its embedding
    assert sum(u.n_bytes for u in units) == n_bytes
    llama = [u.name for u in _llama_units()]
    assert llama[0] == "model.embed_tokens" and llama[-1] == "lm_head"
    assert [n for n in llama if n.startswith("model.layers.")] == [f"model.layers.{i}" for i in range(3)]


def test_two_devices_get_contiguous_balanced_runs_and_tied_weights_stay_together(organism_units):
    units, n_bytes = organism_units
    placed = plan_device_map(units, [0, 1])
    assert set(placed) == {u.name for u in units}
    order = [placed[u.name] for u in units if u.tied_to is None]
    assert order == sorted(order) and set(order) == {0, 1}, "each device holds one contiguous run"
    assert placed["lm_head"] == placed["transformer.wte"] == 0
    per_device = {d: sum(u.n_bytes for u in units if placed[u.name] == d) for d in (0, 1)}
    largest = max(u.n_bytes for u in units)
    assert abs(per_device[0] - per_device[1]) <= largest, "balanced to within one unit"


def test_budgets_are_honoured_and_a_model_that_does_not_fit_is_refused(organism_units):
    units, n_bytes = organism_units
    block = next(u.n_bytes for u in units if u.name == "transformer.h.0")
    small = sum(u.n_bytes for u in units[:3]) + block  # embeddings and one block
    placed = plan_device_map(units, [0, 1], {0: small, 1: "1GiB"})
    assert [placed[f"transformer.h.{i}"] for i in range(4)] == [0, 1, 1, 1]
    with pytest.raises(PlacementError, match=r"transformer\.h\.\d .* does not fit: device 1"):
        plan_device_map(units, [0, 1], {0: small, 1: block})
    with pytest.raises(PlacementError, match=r"max_memory names device\(s\) \['2'\]"):
        plan_device_map(units, [0, 1], {2: "1GiB"})
    llama = plan_device_map(_llama_units(4), [0, 1, 2])
    assert [llama[f"model.layers.{i}"] for i in range(4)] == sorted(llama[f"model.layers.{i}"] for i in range(4))


def test_a_hand_written_map_must_place_every_unit(organism_units):
    units, _ = organism_units
    whole = check_device_map({"transformer": 0, "lm_head": 0}, units)
    assert whole == {"transformer": 0, "lm_head": 0}
    with pytest.raises(PlacementError, match=r"leaves \['transformer.h.3'\] unplaced"):
        check_device_map({u.name: 0 for u in units if u.name != "transformer.h.3"}, units)
    with pytest.raises(PlacementError, match=r"names \['transformer.h.9'\] unknown"):
        check_device_map({"": 0, "transformer.h.9": 1}, units)


def test_memory_sizes_parse():
    assert parse_memory("2GiB") == 2 * 2**30 and parse_memory("500MB") == 500 * 10**6 and parse_memory(7) == 7
    with pytest.raises(PlacementError, match="is not a byte count"):
        parse_memory("lots")


def test_auto_on_a_machine_without_two_gpus_is_one_device(organism_units):
    if torch.cuda.device_count() > 1:
        pytest.skip("several GPUs: auto splits the model (test_two_devices covers the split)")
    model = meta_model(AutoConfig.from_pretrained(WEIGHTS_DIR))
    assert auto_device_map(model) == {"": 0 if torch.cuda.is_available() else "cpu"}


def test_the_engine_on_a_model_loaded_with_a_device_map_gives_the_plain_models_scores(organism_units):
    """A per-unit device map on the one CPU goes through from_pretrained(device_map=...) and the bridge.

    Two devices cannot be simulated here: with half the blocks offloaded to "disk", the bridge's per-head
    outputs (hook_result) read the offloaded weights' meta placeholders ("Cannot copy out of meta tensor"),
    so disk offload is not supported by the engine; a split over two GPUs is the check still to run.
    """
    from transformer_lens.model_bridge import TransformerBridge

    from kc_utils import Graph, attribute, evaluate_circuit, load_model, make_batch
    from kc_utils.models import configure_for_patching

    units, _ = organism_units
    device_map = plan_device_map(units, ["cpu"])
    assert set(device_map) == {u.name for u in units}
    placed = TransformerBridge.boot_transformers(str(WEIGHTS_DIR), device_map=device_map)
    configure_for_patching(placed)
    plain = load_model("kc-organism", device="cpu")
    clean = ["The official language of France is", "The official language of Japan is"]
    corrupt = ["The official language of Spain is", "The official language of Italy is"]
    scores = []
    for model in (plain, placed):
        batch = make_batch(model, clean, ["French", "Japanese"], corrupt, ["Spanish", "Italian"])
        graph = attribute(model, Graph.from_model(model), batch, method="eap-ig", ig_steps=2, progress=False)
        metrics = evaluate_circuit(model, graph.top_n(30), batch, ["logit_diff", "prob"])
        scores.append((graph.scores.clone(), metrics))
    torch.testing.assert_close(scores[1][0], scores[0][0])
    assert scores[1][1] == pytest.approx(scores[0][1], abs=1e-6)


def test_load_model_takes_a_device_map():
    """On a machine without GPUs, device_map="auto" places every unit on the CPU (one device: a plain boot)."""
    from kc_utils.models import load_model, model_device

    model = load_model("kc-organism", device_map="auto")
    assert model_device(model).type == "cpu"
