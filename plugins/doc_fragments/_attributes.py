# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# This doc fragment is PRIVATE to bpfleet.core: it may change at any time. Do not use it
# from other collections.
#
# Usage in a module's DOCUMENTATION:
#   state-changing module:  extends_documentation_fragment: [bpfleet.core._attributes]
#                           plus its own `attributes: {check_mode: {support: full}, ...}`
#   facts module:           extends_documentation_fragment:
#                             - bpfleet.core._attributes
#                             - bpfleet.core._attributes.facts
#                             - bpfleet.core._attributes.facts_module
#   read-only, not facts:   - bpfleet.core._attributes
#                           - bpfleet.core._attributes.info_module
#                           - bpfleet.core._attributes.idempotent_not_modify_state

from __future__ import annotations


class ModuleDocFragment:
    # Descriptions of the attributes every bpfleet module declares. Each module sets
    # `support` (full, partial, none, N/A) itself, or takes it from a fragment below.
    DOCUMENTATION = r"""
options: {}
attributes:
  check_mode:
    description:
      - Can run in check mode and report whether it would change the host, without changing it.
      - Nothing is compiled, loaded, attached or written on the host in check mode.
  diff_mode:
    description:
      - Returns a diff of what changed (or would change in check mode) when run with C(--diff).
  idempotent:
    description:
      - When run twice in a row outside check mode with the same arguments, the second run reports no change.
      - This assumes the host has not changed in a relevant way between the two runs.
"""

    # For modules that only read state. Use together with DOCUMENTATION.
    IDEMPOTENT_NOT_MODIFY_STATE = r"""
options: {}
attributes:
  idempotent:
    support: full
    details:
      - This action does not modify state.
"""

    # For read-only modules that are not facts modules. Use together with DOCUMENTATION
    # and IDEMPOTENT_NOT_MODIFY_STATE.
    INFO_MODULE = r"""
options: {}
attributes:
  check_mode:
    support: full
    details:
      - This action does not modify state.
  diff_mode:
    support: N/A
    details:
      - This action does not modify state.
"""

    # Description of the facts attribute. Use together with DOCUMENTATION.
    FACTS = r"""
options: {}
attributes:
  facts:
    description: Returns an C(ansible_facts) dictionary that updates the host's facts.
"""

    # For facts modules. Use together with DOCUMENTATION and FACTS.
    FACTS_MODULE = r"""
options: {}
attributes:
  check_mode:
    support: full
    details:
      - This action does not modify state.
  diff_mode:
    support: N/A
    details:
      - This action does not modify state.
  idempotent:
    support: full
    details:
      - This action does not modify state.
  facts:
    support: full
"""
