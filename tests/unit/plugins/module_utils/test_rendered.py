# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""RenderedPolicy: the controller's document as it came, with its lists decoded once beside it."""

import json

import pytest

from ansible_collections.bpfleet.core.plugins.module_utils import _history, _packing, _policy
from ansible_collections.bpfleet.core.plugins.module_utils import _host_paths as paths
from ansible_collections.bpfleet.core.plugins.module_utils._rendered import RenderedPolicy
from ansible_collections.bpfleet.core.plugins.plugin_utils import _render


def rendered():
    model, _warnings = _policy.validate({"name": "edge", "interfaces": ["eth0"],
                                         "filter": {"deny": ["198.51.100.0/24"], "allow": ["2001:db8::/64"]}})
    return _render.render(model)


def test_lists_are_decoded_once_and_never_become_part_of_the_document(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "STATE_ROOT", str(tmp_path))
    document = rendered()
    policy = RenderedPolicy(document)
    lists = policy.lists
    assert lists is policy.lists
    assert lists["deny_v4"].matches(int.from_bytes(bytes([198, 51, 100, 7]), "big")) == [(0xC6336400, 24)]
    assert dict(policy) == document
    assert json.loads(json.dumps(policy)) == json.loads(json.dumps(document))
    copy = policy.replaced(interfaces=["eth1"])
    assert copy.lists is lists and copy["interfaces"] == ["eth1"] and policy["interfaces"] == ["eth0"]
    assert RenderedPolicy.of(policy) is policy
    _history.after_apply("edge", policy)
    assert set(paths.read_json(_history.applied_file("edge"))) == set(document) - {"source"}


def test_a_damaged_transfer_fails_when_decoded():
    document = rendered()
    document["lists"]["deny_v4"] = dict(document["lists"]["deny_v4"], digest="sha256:" + "0" * 64)
    with pytest.raises(_packing.PackingError, match="do not match their digest"):
        RenderedPolicy(document).decode_lists()
