"""The family matrix: every decoder family tried, on a tiny random checkpoint, is exact or refused with its reason.

For each exact family four checks, two of them independent of the engine:

1. the full circuit equals the plain ``transformers`` model loaded from the same folder;
2. the empty patched circuit equals the plain model on the corrupt prompts;
3. every out-edge of MLP 1 removed equals the plain model with that MLP module's output replaced, through a forward
   hook, by its output on the corrupt prompts;
4. every out-edge of every head of layer 1 removed equals the plain model with the attention module's output
   replaced likewise (for a post-norm family the module's output is before its norm, which then runs on it);

and EAP equals the gradient of the masked run with respect to a mask of ones. The matrix in
:data:`kc_utils.models.families.FAMILY_MATRIX` (what the docs print) must agree with what these tests find.
"""

from __future__ import annotations

import contextlib
import functools
import itertools

import pytest
import torch
from families import FAMILIES, save_family

from kc_utils import models
from kc_utils.circuits.ablation import ablated_outputs
from kc_utils.circuits.attribute import attribute
from kc_utils.circuits.evaluate import circuit_logits
from kc_utils.circuits.graph import Graph
from kc_utils.circuits.patching import run_masked
from kc_utils.data.metrics import get_metric
from kc_utils.data.prompts import make_batch
from kc_utils.models.families import FAMILY_MATRIX

EXACT = [f for f in FAMILIES if FAMILY_MATRIX[f].exact]
REFUSED = [f for f in FAMILIES if not FAMILY_MATRIX[f].exact]
ATOL = 4e-5


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {family: save_family(root / family, family) for family in FAMILIES}


@pytest.fixture(scope="module")
def loaded(folders):
    return {}


def _load(folders, loaded, family):
    if family not in loaded:
        from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

        model = models.load_model(str(folders[family]), device="cpu")
        saved = PreTrainedTokenizerFast.from_pretrained(str(folders[family]))
        if model.tokenizer("Paris", add_special_tokens=False)["input_ids"] != saved("Paris")["input_ids"]:
            # transformers maps some model types (qwen2) to their own tokenizer class, which rebuilds the tests'
            # word-level vocabulary into nonsense: the prompts need the tokenizer that was saved
            # (the bridge's tokenizer setter would reload the class by name, so the attribute is set directly)
            saved.padding_side = "right"
            model._tokenizer = saved
        plain = AutoModelForCausalLM.from_pretrained(str(folders[family])).eval()
        loaded[family] = (model, plain)
    return loaded[family]


def _module_name(model, module: torch.nn.Module) -> str:
    """The name of a bridge-wrapped module inside the Hugging Face model (to hook the same module elsewhere)."""
    for name, candidate in models.hf_model(model).named_modules():
        if candidate is module:
            return name.replace("._original_component", "")
    raise LookupError(module)


def _replaced_run(plain, name: str, tokens, corrupt_tokens) -> torch.Tensor:
    """The plain model's logits on ``tokens`` with module ``name``'s output taken from its run on ``corrupt_tokens``."""
    module = plain.get_submodule(name)
    saved = {}

    def save(mod, args, output):  # a copy: some families add to the module's output in place (Falcon)
        saved["out"] = (
            tuple(o.clone() if torch.is_tensor(o) else o for o in output)
            if isinstance(output, tuple)
            else output.clone()
        )

    def replace(mod, args, output):
        corrupt = saved["out"]
        if isinstance(output, tuple):
            return (corrupt[0], *output[1:])
        return corrupt

    with torch.no_grad():
        handle = module.register_forward_hook(save)
        plain(corrupt_tokens)
        handle.remove()
        handle = module.register_forward_hook(replace)
        logits = plain(tokens).logits
        handle.remove()
    return logits


@pytest.fixture()
def batch_args(country_batch_args):
    return country_batch_args


@pytest.mark.parametrize("family", EXACT)
def test_exact_family_full_empty_and_node_ablations(folders, loaded, family, batch_args):
    model, plain = _load(folders, loaded, family)
    batch = make_batch(model, *batch_args)
    graph = Graph.from_model(model)
    with torch.no_grad():
        clean_plain = plain(batch.clean).logits
        corrupt_plain = plain(batch.corrupt).logits
    full = circuit_logits(model, graph, batch, "patch")
    torch.testing.assert_close(full, clean_plain, atol=ATOL, rtol=1e-5)
    empty = circuit_logits(model, graph, batch, "patch", keep=torch.zeros_like(graph.real_edges))
    torch.testing.assert_close(empty, corrupt_plain, atol=ATOL, rtol=1e-5)

    no_mlp1 = graph.real_edges.clone()
    no_mlp1[graph.mlp_upstream_index(1)] = False
    # the MLP's output projection where it has one (OPT's MLP is fc1/fc2 inside the layer; MPT's MLP module adds the
    # residual to its own output), else the whole MLP module (mixtures of experts)
    out = getattr(model.blocks[1].mlp, "out", None)
    mlp = _module_name(model, out.original_component if out is not None else model.blocks[1].mlp.original_component)
    expected = _replaced_run(plain, mlp, batch.clean, batch.corrupt)
    assert (expected - clean_plain).abs().max() > 1e-3  # the ablation does something
    torch.testing.assert_close(
        circuit_logits(model, graph, batch, "patch", keep=no_mlp1), expected, atol=ATOL, rtol=1e-5
    )

    no_heads1 = graph.real_edges.clone()
    no_heads1[graph.head_upstream_slice(1)] = False
    attn = _module_name(model, model.blocks[1].attn.original_component)
    expected = _replaced_run(plain, attn, batch.clean, batch.corrupt)
    assert (expected - clean_plain).abs().max() > 1e-3
    torch.testing.assert_close(
        circuit_logits(model, graph, batch, "patch", keep=no_heads1), expected, atol=ATOL, rtol=1e-5
    )


@pytest.mark.parametrize("family", EXACT)
def test_exact_family_eap_equals_the_mask_gradient(folders, loaded, family, batch_args):
    model, _ = _load(folders, loaded, family)
    batch = make_batch(model, *batch_args)
    graph = Graph.from_model(model)
    attribute(model, graph, batch, metric="logit_diff", method="eap", progress=False)
    with torch.no_grad():
        ablated = ablated_outputs(model, graph, batch, "patch")
    ones = torch.ones(graph.real_edges.shape, requires_grad=True)
    value = get_metric("logit_diff")(run_masked(model, graph, batch.clean, ablated, ones), batch).mean()
    (gradient,) = torch.autograd.grad(value, ones)
    expected = torch.where(graph.real_edges, gradient, torch.zeros_like(gradient))
    scale = float(expected.abs().max())
    assert scale > 0
    torch.testing.assert_close(graph.scores, expected, atol=1e-5 * max(scale, 1.0), rtol=1e-4)


@pytest.mark.parametrize("family", REFUSED)
def test_refused_family_says_why(folders, family):
    reason = FAMILY_MATRIX[family].reason
    with pytest.raises(models.ModelLoadError) as refused:
        models.load_model(str(folders[family]), device="cpu")
    message = str(refused.value)
    assert (FAMILY_MATRIX[family].model_type or family) in message and reason in message


def test_the_matrix_names_every_family_tried():
    assert set(FAMILY_MATRIX) == set(FAMILIES)
    for family, row in FAMILY_MATRIX.items():
        assert row.exact == (row.reason == ""), family


@pytest.mark.parametrize("family", EXACT)
def test_routes_are_what_the_matrix_says(folders, loaded, family):
    model, _ = _load(folders, loaded, family)
    assert models.edge_routes(model).describe() == FAMILY_MATRIX[family].routes


def test_a_post_norm_bias_is_refused(folders):
    """An attention output bias inside a post-norm has no exact split: the model is refused, naming it."""
    from transformers import AutoModelForCausalLM

    folder = folders["olmo2"].parent / "olmo2_bias"
    plain = AutoModelForCausalLM.from_pretrained(str(folders["olmo2"]))
    for layer in plain.model.layers:
        old = layer.self_attn.o_proj
        new = torch.nn.Linear(old.in_features, old.out_features, bias=True)
        with torch.no_grad():
            new.weight.copy_(old.weight)
            new.bias.normal_(0, 0.2)
        layer.self_attn.o_proj = new
    plain.config.attention_bias = True
    plain.save_pretrained(folder)
    from conftest import build_tokenizer

    build_tokenizer().save_pretrained(folder)
    with pytest.raises(models.UnsupportedFamilyError, match=r"bias b_O inside the post-attention norm"):
        models.load_model(str(folder), device="cpu")


def test_bridge_failures_name_the_family(tmp_path):
    """A checkpoint the bridge cannot boot gets a ModelLoadError naming its family, not a raw error."""
    from conftest import build_tokenizer
    from transformers import BertConfig, BertForMaskedLM

    folder = tmp_path / "bert"
    BertForMaskedLM(
        BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64)
    ).save_pretrained(folder)
    build_tokenizer().save_pretrained(folder)
    with pytest.raises(models.ModelLoadError, match="bert"):
        models.load_model(str(folder), device="cpu")


@pytest.mark.parametrize("family", EXACT)
def test_routed_hooks_and_last_position_reproduce_the_model(folders, loaded, family):
    model, _ = _load(folders, loaded, family)
    found = models.edge_point_round_trip(model)
    assert max(found.values()) < 1e-5, found


@pytest.mark.parametrize("family", EXACT)
def test_early_stopping_caches_and_plain_passes_read_what_the_full_pass_does(folders, loaded, family, batch_args):
    """``cache_activations`` (stops after its last name) equals ``run_with_cache`` at every edge point of the first
    and last blocks, routed ones included, and the last-position logits equal the plain model's, with the edge
    hooks on and switched off."""
    model, plain = _load(folders, loaded, family)
    batch = make_batch(model, *batch_args)
    last = model.cfg.n_layers - 1
    names = [
        models.head_result_hook(0),
        models.mlp_out_hook(0),
        models.head_result_hook(last),
        models.mlp_out_hook(last),
    ]
    rows = torch.arange(len(batch.clean))
    with torch.no_grad():
        expected = plain(batch.clean).logits[rows, batch.last_pos]
        _, full = models.run_with_cache(model, batch.clean, names)
        early = models.cache_activations(model, batch.clean, names)
        with models.without_edge_hooks(model):
            cheap = models.last_logits(model, batch.clean, batch.last_pos)
        hooked = models.last_logits(model, batch.clean, batch.last_pos)
    for name in names:
        torch.testing.assert_close(early[name], full[name], atol=0, rtol=0)
    torch.testing.assert_close(hooked, expected, atol=ATOL, rtol=1e-5)
    torch.testing.assert_close(cheap, expected, atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("family", EXACT)
def test_a_pass_resumed_at_a_block_equals_the_full_pass(folders, loaded, family, batch_args):
    """``logits_from_layer`` skips the blocks below and injects the recorded stream: its logits, with a hook at the
    resumed block and one above, equal the full pass's with the same hooks (edge hooks on and off), and so does
    the gradient of a leaf the hooks read."""
    model, _ = _load(folders, loaded, family)
    batch = make_batch(model, *batch_args)
    rows = torch.arange(len(batch.clean))
    last = model.cfg.n_layers - 1
    for layer, edge_hooks in itertools.product(range(model.cfg.n_layers), (True, False)):
        scale = torch.tensor(1.5, requires_grad=True)

        def louder(out, hook, scale=scale):
            return out * scale

        above = models.head_result_hook(last) if edge_hooks else models.mlp_out_hook(last)
        hooked = [(models.mlp_out_hook(layer), louder), (above, louder)]
        with contextlib.nullcontext() if edge_hooks else models.without_edge_hooks(model):
            name = models.resid_pre_hook(layer)
            residual = models.cache_activations(model, batch.clean, [name])[name]
            full = models.logits_at(model, batch.clean, rows, batch.last_pos, hooked)
            (full_grad,) = torch.autograd.grad(full.sum(), scale)
            resumed = models.logits_from_layer(model, layer, residual, batch.clean, rows, batch.last_pos, hooked)
            (resumed_grad,) = torch.autograd.grad(resumed.sum(), scale)
        torch.testing.assert_close(resumed, full, atol=ATOL, rtol=1e-5)
        torch.testing.assert_close(resumed_grad, full_grad, atol=1e-3, rtol=1e-4)
    # every block runs again afterwards, and a hook below the resumed block is refused
    with torch.no_grad():
        again = models.last_logits(model, batch.clean, batch.last_pos)
        torch.testing.assert_close(again, models.logits_at(model, batch.clean, rows, batch.last_pos), atol=0, rtol=0)
    with pytest.raises(ValueError, match="hooks below it never fire"):
        models.logits_from_layer(
            model, 1, residual, batch.clean, rows, batch.last_pos, [(models.mlp_out_hook(0), louder)]
        )


@pytest.mark.parametrize("family", EXACT)
def test_head_work_without_split_inputs_equals_the_edge_hooked_pass(folders, loaded, family, batch_args):
    """Under ``only_head_results`` each head's output is the one the edge hooks give, and a pass with heads
    zeroed, mean-ablated or patched there gives the same logits; the settings come back afterwards."""
    model, _ = _load(folders, loaded, family)
    batch = make_batch(model, *batch_args)
    rows = torch.arange(len(batch.clean))
    layers = range(model.cfg.n_layers)
    names = [models.head_result_hook(layer) for layer in layers]
    before = (model.cfg.use_attn_result, model.cfg.use_split_qkv_input, model.cfg.use_hook_mlp_in)
    with torch.no_grad():
        corrupt = models.cache_activations(model, batch.corrupt, names)

        def rewrite(result, hook, name):
            out = result.clone()
            out[:, :, 0] = 0  # head 0 zeroed
            out[:, :, -1] = result[:, :, -1].mean(dim=(0, 1))  # the last head at its mean
            out[:, :, 1 % result.shape[2]] = corrupt[name][:, :, 1 % result.shape[2]]  # head 1 patched
            return out

        hooks = [(name, functools.partial(rewrite, name=name)) for name in names]
        read = [*names, *(models.mlp_out_hook(layer) for layer in layers)]
        full_cache = models.cache_activations(model, batch.clean, read)
        full = models.logits_at(model, batch.clean, rows, batch.last_pos, hooks)
        with models.only_head_results(model):
            cheap_cache = models.cache_activations(model, batch.clean, read)
            cheap = models.logits_at(model, batch.clean, rows, batch.last_pos, hooks)
            assert not model.cfg.use_split_qkv_input
    assert (model.cfg.use_attn_result, model.cfg.use_split_qkv_input, model.cfg.use_hook_mlp_in) == before
    for name in read:
        torch.testing.assert_close(cheap_cache[name], full_cache[name], atol=ATOL, rtol=1e-5)
    torch.testing.assert_close(cheap, full, atol=ATOL, rtol=1e-5)
    assert (full - models.logits_at(model, batch.clean, rows, batch.last_pos)).abs().max() > 1e-4  # the hooks bite


@pytest.mark.parametrize("family", EXACT)
def test_the_residual_stream_and_final_norm_do_not_depend_on_the_edge_hooks(folders, loaded, family, batch_args):
    """The logit lens (every block's output stream), the final norm's scale and the logits node's input read the
    same with the edge hooks on, with only the head results, and with none (the lens and the direct logit
    attribution run without them)."""
    model, _ = _load(folders, loaded, family)
    batch = make_batch(model, *batch_args)
    names = [models.INPUT_HOOK, *(models.resid_post_hook(layer) for layer in range(model.cfg.n_layers))]
    names += [models.LOGITS_INPUT_HOOK, models.final_norm_scale_hook()]
    with torch.no_grad():
        hooked = models.cache_activations(model, batch.clean, names)
        with models.only_head_results(model):
            heads_only = models.cache_activations(model, batch.clean, names)
        with models.without_edge_hooks(model):
            plain = models.cache_activations(model, batch.clean, names)
    for name in names:
        torch.testing.assert_close(heads_only[name], hooked[name], atol=ATOL, rtol=1e-5)
        torch.testing.assert_close(plain[name], hooked[name], atol=ATOL, rtol=1e-5)


def test_wrong_post_norm_shares_are_caught_at_load(folders, monkeypatch):
    """The load-time checks are not vacuous for post-norms: shares off by 1% refuse the model."""
    from kc_utils.models.edge_points import PostNorm

    right = PostNorm.shares
    monkeypatch.setattr(PostNorm, "shares", lambda self, results: right(self, results) * 1.01)
    with pytest.raises(models.DecompositionError, match="gemma2"):
        models.load_model(str(folders["gemma2"]), device="cpu")


def test_the_docs_page_prints_the_matrix():
    from pathlib import Path

    from kc_utils.models.families import family_table

    page = (Path(__file__).resolve().parents[1] / "docs" / "families.md").read_text()
    printed = page.split("<!-- family-table:start -->\n")[1].split("\n<!-- family-table:end -->")[0]
    assert printed == family_table(), "docs/families.md is stale: paste kc_utils.models.families.family_table()"


def test_the_readme_prints_the_matrix_summary():
    from pathlib import Path

    from kc_utils.models.families import family_summary

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    printed = readme.split("<!-- families:start -->\n")[1].split("\n<!-- families:end -->")[0]
    assert printed == family_summary(), "README.md is stale: paste kc_utils.models.families.family_summary()"


@pytest.mark.parametrize("family", EXACT)
def test_each_head_reads_its_own_input(folders, loaded, family, batch_args):
    """Changing one query (key, value) head's input changes that head's pattern (its group's patterns, its group's
    outputs) and no other head's: per-head receivers are independent, as single-edge patching assumes."""
    model, _ = _load(folders, loaded, family)
    batch = make_batch(model, *batch_args)
    shape = models.model_shape(model)
    group = shape.heads_per_kv
    seen = {}

    def record(name):
        def hook(act, hook):
            seen[name] = act.detach().clone()

        return hook

    # a random direction (a constant shift would vanish under a LayerNorm)
    direction = torch.randn(shape.d_model, generator=torch.Generator().manual_seed(0))

    def shift(act, hook):
        act = act.clone()
        act[:, :, 0] += direction.to(act.dtype)
        return act

    watched = {"q": models.attn_pattern_hook(1), "k": models.attn_pattern_hook(1), "v": "blocks.1.attn.hook_z"}
    for letter, name in watched.items():
        with torch.no_grad():
            models.run_with_hooks(model, batch.clean, [(name, record(name))])
            before = seen[name]
            models.run_with_hooks(model, batch.clean, [(models.qkv_input_hook(1, letter), shift), (name, record(name))])
            after = seen[name]
        moved = (after - before).abs()
        moved = moved.amax(dim=(0, 2, 3)) if name.endswith("pattern") else moved.amax(dim=(0, 1, 3))  # per head
        own = 1 if letter == "q" else group
        assert float(moved[:own].max()) > 1e-4, (letter, moved)
        if own < len(moved):  # (one key/value head for all: every head is its group)
            assert float(moved[own:].max()) < 1e-6, (letter, moved)
