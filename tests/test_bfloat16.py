"""``load_model(dtype=...)`` by name: "float32" and "bfloat16" load and pass their checks; other names are refused."""

from __future__ import annotations

import pytest
import torch

from kc_utils.models import load_model, loading, model_dtype
from kc_utils.models.decomposition import decomposition_tolerance, edge_point_round_trip, residual_decomposition


@pytest.mark.parametrize(("name", "expected"), [("float32", torch.float32), ("bfloat16", torch.bfloat16)])
def test_a_dtype_name_loads_the_organism_in_that_dtype(name, expected):
    model = load_model("kc-organism", device="cpu", dtype=name)  # runs the load-time decomposition checks
    assert model_dtype(model) == expected
    assert {p.dtype for p in model.parameters() if p.is_floating_point()} == {expected}


def test_the_organism_passes_its_checks_in_bfloat16_with_room_to_spare():
    """The remainders are bfloat16 rounding, well under the 16-bit tolerance (5e-2), not a loosened check."""
    model = load_model("kc-organism", device="cpu", dtype="bfloat16")
    tolerance = decomposition_tolerance(torch.bfloat16)
    assert max(c.relative for c in residual_decomposition(model)) < tolerance / 4
    assert max(edge_point_round_trip(model).values()) < tolerance / 4


@pytest.mark.parametrize("dtype", ["float16", "bf16", "fp32", "torch.bfloat16", 16, None])
def test_another_dtype_is_refused_before_anything_loads(dtype, monkeypatch):
    def must_not_run(name):
        raise AssertionError("the model was looked up before the dtype was checked")

    monkeypatch.setattr(loading, "resolve_model", must_not_run)
    with pytest.raises(ValueError, match=r"dtype=.*'bfloat16', 'float32'"):
        load_model("kc-organism", device="cpu", dtype=dtype)


def test_a_torch_dtype_is_still_taken_as_given():
    model = load_model("kc-organism", device="cpu", dtype=torch.bfloat16, check_decomposition=False)
    assert model_dtype(model) == torch.bfloat16
