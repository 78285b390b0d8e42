"""The family matrix: which decoder families the edge engine reads exactly, how, and which it refuses and why.

Each row was found by ``tests/test_families.py`` on a tiny random checkpoint of the family (2 layers, d_model 32,
every weight, bias and norm perturbed), and that test fails if a row says otherwise: an *exact* family passes four
checks within 4e-5 — the full circuit equals the plain ``transformers`` model, the empty patched circuit equals the
corrupt run, and removing every out-edge of MLP 1 or of every head of layer 1 equals the plain model with that
module's output replaced by its corrupt-run output through a forward hook — EAP equals the mask gradient, and each
head reads its own input alone (changing one query, key or value head's input moves no other group's head). A
*refused* family raises :class:`~kc_utils.models.ModelLoadError` at load with the reason given here.
:func:`family_table` renders the matrix for the docs.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FAMILY_MATRIX", "FamilyRow", "family_summary", "family_table"]

NATIVE = "native: per-head results, q/k/v inputs and MLP inputs come from the bridge"
POST_NORM = "head writes are shares of the attention post-norm"
PARALLEL_ONE_NORM = "the MLP reads the block input through its own copy of ln1"
UNSPLIT = "head results computed from z and W_O; q/k/v inputs split per head at the projections"
SHARED_QK_NORM = "query/key norms across heads applied to each head's own input"


@dataclass(frozen=True)
class FamilyRow:
    """One family of the matrix.

    Attributes:
        examples: models of the family people use.
        exact: whether the edge engine reads it exactly.
        routes: what :mod:`kc_utils.models.edge_points` routes for it (:meth:`EdgeRoutes.describe`); empty if refused.
        reason: why it is refused (a phrase of the load error); empty if exact.
        model_type: the checkpoint's ``model_type`` when the row is a variant of a family (empty: the row's key).
    """

    examples: str
    exact: bool
    routes: str = ""
    reason: str = ""
    model_type: str = ""


FAMILY_MATRIX: dict[str, FamilyRow] = {
    "gpt2": FamilyRow("GPT-2 (the paper's GPT-2 medium), DistilGPT-2", True, NATIVE),
    "gpt_neox": FamilyRow("Pythia, GPT-NeoX (parallel block, two norms)", True, NATIVE),
    "llama": FamilyRow("Llama 2/3, TinyLlama, SmolLM2", True, NATIVE),
    "mistral": FamilyRow("Mistral 7B", True, NATIVE),
    "qwen2": FamilyRow("Qwen2, Qwen2.5", True, NATIVE),
    "qwen3": FamilyRow("Qwen3", True, NATIVE),
    "phi3": FamilyRow("Phi-3, Phi-4-mini", True, NATIVE),
    "olmo": FamilyRow("OLMo 1", True, NATIVE),
    "gemma": FamilyRow("Gemma 1", True, NATIVE),
    "stablelm": FamilyRow("StableLM 2", True, NATIVE),
    "starcoder2": FamilyRow("StarCoder2", True, NATIVE),
    "mixtral": FamilyRow("Mixtral (mixture of experts: the MoE layer is one MLP node)", True, NATIVE),
    "qwen2_moe": FamilyRow("Qwen1.5-MoE (mixture of experts: one MLP node)", True, NATIVE),
    "granite": FamilyRow("Granite 3 (residual and attention multipliers)", True, NATIVE),
    "smollm3": FamilyRow("SmolLM3", True, NATIVE),
    "gemma2": FamilyRow("Gemma 2 (Gemma Scope's model; attention and final softcaps)", True, POST_NORM),
    "gemma3_text": FamilyRow("Gemma 3 text (Gemma-3-270M, 1B)", True, POST_NORM),
    "olmo2": FamilyRow(
        "OLMo 2 (norms after attention and MLP, q/k norms across heads)", True, f"{POST_NORM}; {SHARED_QK_NORM}"
    ),
    "gptj": FamilyRow("GPT-J-6B (ROME's and MEMIT's model)", True, f"{UNSPLIT}; {PARALLEL_ONE_NORM}"),
    "gpt_neo": FamilyRow("GPT-Neo 125M-2.7B", True, UNSPLIT),
    "opt": FamilyRow("OPT 125M-66B", True, UNSPLIT),
    "phi": FamilyRow("Phi-1.5, Phi-2", True, PARALLEL_ONE_NORM),
    "falcon": FamilyRow("Falcon 7B (parallel attention and MLP, one norm)", True, PARALLEL_ONE_NORM),
    "cohere": FamilyRow("Command R (parallel attention and MLP, one norm)", True, PARALLEL_ONE_NORM),
    "bloom": FamilyRow(
        "BLOOM 560M-176B",
        False,
        reason="the bridge never fires the MLP-input hook (hook_mlp_in)",
    ),
    # beyond the list: variants and other families people bring
    "gpt_neox_sequential": FamilyRow("GPT-NeoX without the parallel residual", True, NATIVE, model_type="gpt_neox"),
    "llama_biases": FamilyRow("Llama-style with attention and MLP biases", True, NATIVE, model_type="llama"),
    "gemma3_text_softcap": FamilyRow(
        "Gemma 3 with one key/value head, a query scalar, a 4-token window and a final softcap",
        True,
        POST_NORM,
        model_type="gemma3_text",
    ),
    "gpt_bigcode": FamilyRow("StarCoder 1, SantaCoder (multi-query)", True, NATIVE),
    "mpt": FamilyRow("MPT 7B (ALiBi)", True, "q/k/v inputs split per head at the projections"),
    "nemotron": FamilyRow("Nemotron (LayerNorm1P)", True, NATIVE),
    "olmoe": FamilyRow("OLMoE (mixture of experts: one MLP node; q/k norms across heads)", True, SHARED_QK_NORM),
    "qwen3_moe": FamilyRow("Qwen3-MoE (mixture of experts: one MLP node)", True, NATIVE),
    "exaone4": FamilyRow("EXAONE 4 (post-norms)", True, POST_NORM),
    "glm": FamilyRow("GLM-4 (chat)", True, NATIVE),
    "codegen": FamilyRow(
        "CodeGen", False, reason="switching on the edge hooks failed inside TransformerLens 4's bridge"
    ),
    "falcon_new_architecture": FamilyRow(
        "Falcon 40B/180B (new decoder architecture, grouped key/value heads)",
        False,
        reason="TransformerLens 4's bridge cannot load",
        model_type="falcon",
    ),
    "deepseek_v3": FamilyRow(
        "DeepSeek-V3 (multi-head latent attention)",
        False,
        reason="the bridge does not split the query/key/value inputs per head",
    ),
    "mamba": FamilyRow("Mamba (state-space, no attention)", False, reason="has no attention bridge"),
}


def family_table() -> str:
    """The matrix as a Markdown table (family, examples, verdict, how or why)."""
    lines = ["| family (`model_type`) | models | edges | how, or why not |", "|---|---|---|---|"]
    for family, row in FAMILY_MATRIX.items():
        verdict = "exact" if row.exact else "refused"
        variant = family.removeprefix(f"{row.model_type}_").replace("_", " ")
        name = f"`{family}`" if not row.model_type else f"`{row.model_type}` ({variant})"
        lines.append(f"| {name} | {row.examples} | {verdict} | {row.routes or row.reason} |")
    return "\n".join(lines)


def family_summary(width: int = 118) -> str:
    """The matrix in a few lines for the README: the exact families by name, the refused ones with their reasons."""
    import textwrap

    def label(family: str, row: FamilyRow) -> str:
        return family if not row.model_type else f"{row.model_type} ({family.removeprefix(row.model_type + '_')})"

    exact = [label(f, r).replace("_", "\\_") for f, r in FAMILY_MATRIX.items() if r.exact]
    refused = [f"{label(f, r)} ({r.reason})".replace("_", "\\_") for f, r in FAMILY_MATRIX.items() if not r.exact]
    text = (
        f"**Exact ({len(exact)} of {len(FAMILY_MATRIX)} tried):** {', '.join(exact)}. "
        f"**Refused at load, with the reason ({len(refused)}):** {'; '.join(refused)}."
    )
    return "\n".join(textwrap.wrap(text, width=width, break_on_hyphens=False))
