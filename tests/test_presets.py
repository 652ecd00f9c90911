"""Preset dicts: names, the published values they encode, and resolution rules."""

from __future__ import annotations

import pytest

from maskkit.presets import ACLIP_EFF_KEEP_RATIO, get_preset, list_presets, resolve_preset


def test_preset_names():
    assert list_presets() == ["aclip", "aclip_eff", "attentive", "clip", "flip", "slip"]


def test_clip_is_unmasked_single_view():
    clip = get_preset("clip")
    assert clip["views"]["type"] == "single"
    assert clip["scorer"] is None
    assert clip["objectives"] == {"clip": {"views": {"view1": 1.0}}}


def test_flip_random_half():
    flip = get_preset("flip")
    assert flip["scorer"] == "random"
    assert flip["keep_ratio"] == 0.5
    assert flip["block_size"] == 1


def test_slip_objectives():
    slip = get_preset("slip")
    assert slip["views"]["type"] == "slip"
    assert slip["scorer"] is None
    assert slip["objectives"]["clip"]["views"] == {"clip": 1.0}
    assert tuple(slip["objectives"]["simclr"]["views"]) == ("simclr1", "simclr2")
    assert slip["objectives"]["simclr"]["weight"] == 1.0


def test_aclip_published_values():
    aclip = get_preset("aclip")
    assert aclip["views"]["type"] == "aclip"
    assert aclip["scorer"] == {"type": "ema_attention", "layers": "all"}
    assert aclip["keep_ratio"] == 0.5
    assert aclip["block_size"] == 2
    assert tuple(aclip["masked_views"]) == ("view1", "view2")
    objectives = aclip["objectives"]
    assert objectives["clip"]["views"] == {"view1": 0.5, "view2": 0.5}
    assert objectives["simclr"]["weight"] == 1.0
    assert objectives["simclr"]["temperature"] == 0.1
    # SimCLR compares the two different online views, not a view with itself.
    assert tuple(objectives["simclr"]["views"]) == ("view1", "view2")
    assert objectives["byol"]["weight"] == 2.0
    assert aclip["ema"] == {"start_decay": 0.996, "end_decay": 1.0}
    assert aclip["freeze_patch_embed"] is True


def test_aclip_eff_differs_only_in_cost_knobs():
    aclip, eff = get_preset("aclip"), get_preset("aclip_eff")
    assert eff["teacher_resolution"] == 0.5
    assert eff["keep_ratio"] == ACLIP_EFF_KEEP_RATIO
    assert 0.3 < ACLIP_EFF_KEEP_RATIO < 0.5
    for key in set(aclip) - {"keep_ratio"}:
        assert eff[key] == aclip[key], key


def test_attentive_masks_its_single_view():
    attentive = get_preset("attentive")
    assert attentive["views"]["type"] == "single"
    assert attentive["scorer"]["type"] == "ema_attention"
    assert tuple(attentive["masked_views"]) == ("view1",)
    assert "byol" not in attentive["objectives"]


def test_get_preset_returns_copy():
    first = get_preset("aclip")
    first["objectives"]["clip"]["views"]["view1"] = 9.0
    assert get_preset("aclip")["objectives"]["clip"]["views"]["view1"] == 0.5


def test_resolve_with_base_overrides():
    spec = resolve_preset({"base": "aclip", "keep_ratio": 0.25, "scorer": "learned"})
    assert spec["keep_ratio"] == 0.25
    assert spec["scorer"] == "learned"
    assert spec["block_size"] == 2
    assert "base" not in spec


def test_unknown_preset_lists_names():
    with pytest.raises(KeyError, match="aclip_eff"):
        get_preset("aclip-eff")


def test_incomplete_dict_rejected():
    with pytest.raises(ValueError, match="views"):
        resolve_preset({"keep_ratio": 0.5})
    with pytest.raises(TypeError, match="preset"):
        resolve_preset(3)


def test_preset_plugins_registered():
    from maskkit.registry import list_objectives, list_scorers, list_view_generators

    for name in list_presets():
        spec = get_preset(name)
        views = spec["views"]["type"]
        assert views in list_view_generators(), (name, views)
        scorer = spec["scorer"]
        if scorer is not None:
            scorer_name = scorer if isinstance(scorer, str) else scorer["type"]
            assert scorer_name in list_scorers(), (name, scorer_name)
        for objective in spec["objectives"]:
            assert objective in list_objectives(), (name, objective)
