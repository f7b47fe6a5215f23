# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A rendered policy on the host: the plain JSON document the controller rendered
(plugins/plugin_utils/_render.py), with its list maps decoded once, on demand.

The document stays exactly what the controller sent and what the host records (applied.json,
good/rendered.json): the decoded lists are an attribute of this object, never a key of the
document, so nothing has to remember to remove them before writing it.

Standard library only.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.bpfleet.core.plugins.module_utils import _packing


class RenderedPolicy(dict):
    """The rendered document (a dict: name, source, source_digest, lists, maps, programs, rules,
    rule_details, interfaces, xdp_mode, filter, log, ...) plus `lists`, its list maps decoded."""

    def __init__(self, document):
        super(RenderedPolicy, self).__init__(document)
        self._lists = getattr(document, "_lists", None)

    @classmethod
    def of(cls, document):
        """`document` itself when it is one already (its decoded lists are kept), else a new one."""
        return document if isinstance(document, cls) else cls(document)

    def replaced(self, **changes):
        """A copy with some keys changed; the decoded lists go along unless `lists` changes."""
        copy = RenderedPolicy(dict(self, **changes))
        if "lists" not in changes:
            copy._lists = self._lists
        return copy

    @property
    def lists(self):
        """{map name: _packing.PackedList}; raises _packing.PackingError for a damaged transfer."""
        return self.decode_lists()

    def decode_lists(self):
        """Decode the packed lists now (once): a damaged transfer fails here, before anything else."""
        if self._lists is None:
            self._lists = _packing.unpack_lists(self["lists"])
        return self._lists

    @property
    def filter_section(self):
        """What the XDP filter decides by besides the lists: {"default", "ports", "rate_limit"}."""
        return self.get("filter") or {}

    def document(self, without=()):
        """The plain document (a new dict) to record, without the keys named."""
        return dict((key, value) for key, value in self.items() if key not in without)
