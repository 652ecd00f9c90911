"""Registries: decorators, specs, errors and entry-point discovery of plugins."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from maskkit.registry import Registry


def test_register_and_build_by_name_and_dict():
    registry = Registry("scorer", "maskkit.test-unused-group")

    @registry.register("constant")
    class Constant:
        def __init__(self, value=1.0):
            self.value = value

    assert registry.build("constant").value == 1.0
    assert registry.build({"type": "constant", "value": 3.0}).value == 3.0
    assert registry.build({"type": "constant", "value": 3.0}, value=5.0).value == 5.0
    assert registry.build({"type": Constant}).value == 1.0
    built = Constant(7.0)
    assert registry.build(built) is built
    assert registry.names() == ["constant"]


def test_unknown_name_lists_registered():
    registry = Registry("scorer", "maskkit.test-unused-group")
    registry.register("alpha", object)
    registry.register("beta", object)
    with pytest.raises(KeyError, match="unknown scorer 'gamma'; registered: alpha, beta"):
        registry.build("gamma")


def test_dict_spec_without_type_rejected():
    registry = Registry("objective", "maskkit.test-unused-group")
    registry.register("clip", dict)
    with pytest.raises(ValueError, match="no 'type' key"):
        registry.build({"weight": 1.0})


def test_duplicate_name_rejected_unless_forced():
    registry = Registry("view generator", "maskkit.test-unused-group")
    registry.register("single", int)
    with pytest.raises(KeyError, match="already registered"):
        registry.register("single", float)
    registry.register("single", float, force=True)
    assert registry.get("single") is float


def test_builtin_families_are_listed():
    import maskkit

    assert {"random", "ema_attention", "learned"} <= set(maskkit.list_scorers())
    assert {"single", "aclip", "slip", "multi_crop"} <= set(maskkit.list_view_generators())
    assert {"clip", "simclr", "byol"} <= set(maskkit.list_objectives())


PLUGIN_MODULE = '''
import torch
from maskkit.scorers.base import Scorer


class CentreScorer(Scorer):
    """Prefers patches near the image centre."""

    requires = frozenset({"tokens"})

    def score(self, inputs):
        h, w = inputs.grid
        ys = torch.arange(h, dtype=torch.float32).view(h, 1) - (h - 1) / 2
        xs = torch.arange(w, dtype=torch.float32).view(1, w) - (w - 1) / 2
        centre = -(ys ** 2 + xs ** 2).flatten()
        return centre.expand(inputs.tokens.shape[0], -1).to(inputs.tokens.device)
'''

DISCOVERY_SCRIPT = '''
import sys
import maskkit

names = maskkit.list_scorers()
assert "centre_plugin" in names, names
assert "centre_plugin_module" not in sys.modules, "listing imported the plugin"
scorer = maskkit.build_scorer("centre_plugin")
assert type(scorer).__name__ == "CentreScorer"
assert "centre_plugin_module" in sys.modules
print("discovered", type(scorer).__module__)
'''


def test_entry_point_plugin_discovered_without_import(tmp_path):
    """A distribution on sys.path that declares a maskkit.scorers entry point is found lazily."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "centre_plugin_module.py").write_text(textwrap.dedent(PLUGIN_MODULE))
    dist_info = site / "centre_plugin-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: centre-plugin\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(
        "[maskkit.scorers]\ncentre_plugin = centre_plugin_module:CentreScorer\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", DISCOVERY_SCRIPT],
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "discovered centre_plugin_module" in result.stdout


def test_broken_plugin_names_its_entry_point(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    dist_info = site / "broken_plugin-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text("[maskkit.scorers]\nbroken = no_such_module_xyz:Scorer\n")
    script = (
        "import maskkit\n"
        "try:\n"
        "    maskkit.build_scorer('broken')\n"
        "except ImportError as error:\n"
        "    print('error:', error)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], env={"PYTHONPATH": str(site)},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "no_such_module_xyz:Scorer" in result.stdout
    assert "'broken'" in result.stdout
