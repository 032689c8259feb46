"""Parameter counts on the meta device: the official sizes exactly, dense twins at equal activity."""

from __future__ import annotations

import pytest
import torch

from microdit.model import MicroDiT
from microdit.model.sizes import model_config, parameter_counts, size_names

OFFICIAL = {"MicroDiT_Tiny_2": 200_692_752, "MicroDiT_XL_2": 1_165_442_320}
MOE_SIZES = [name for name in size_names() if not name.endswith("_dense")]


@pytest.mark.parametrize("name,count", OFFICIAL.items())
def test_official_parameter_counts_on_meta(name, count):
    with torch.device("meta"):
        model = MicroDiT(model_config(name))
    assert all(p.is_meta for p in model.parameters())  # nothing allocated
    assert sum(p.numel() for p in model.parameters()) == count
    assert parameter_counts(model_config(name))["total"] == count


def test_official_counts_do_not_depend_on_the_latent_or_masking():
    for overrides in ({"latent_channels": 4, "pos_interp_scale": 2.0}, {"mask_ratio": 0.5}):
        assert parameter_counts(model_config("MicroDiT_XL_2", **overrides))["total"] == 1_165_442_320


def test_xl_active_and_expert_parameters():
    counts = parameter_counts(model_config("MicroDiT_XL_2"))
    assert counts["experts"] == 603_979_776  # SPEC: experts hold 604M
    # capacity 2 of 8 experts: a quarter of the expert weights are active per token (~712M)
    assert counts["active"] == counts["total"] - counts["experts"] + counts["experts"] // 4
    assert counts["active"] == pytest.approx(712e6, rel=0.005)


@pytest.mark.parametrize("name", MOE_SIZES)
def test_dense_twin_matches_moe_active_parameters_within_2_percent(name):
    moe = parameter_counts(model_config(name))
    dense = parameter_counts(model_config(f"{name}_dense"))
    assert dense["experts"] == 0 and dense["total"] == dense["active"]
    assert moe["total"] > moe["active"]
    assert abs(dense["active"] - moe["active"]) / moe["active"] < 0.02


def test_ladder_grows():
    totals = [parameter_counts(model_config(name))["total"] for name in MOE_SIZES]
    assert totals == sorted(totals) and len(set(totals)) == len(totals)
    assert totals[0] < 5e6  # a CPU-friendly bottom rung
