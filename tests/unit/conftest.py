# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Make `import ansible_collections.bpfleet.core...` resolve to this working tree.

The collection is imported through <repo>/.tmp/collections/ansible_collections/bpfleet/core,
a symlink to the repository root (scripts/bootstrap.sh makes it too; .tmp/ is git-ignored).
Under ansible-test the tree already sits in an ansible_collections path and nothing is
needed, but adding ours is harmless.
"""

import os
import sys

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
COLLECTIONS = os.path.join(REPO, ".tmp", "collections")
COLLECTION_LINK = os.path.join(COLLECTIONS, "ansible_collections", "bpfleet", "core")


def _ensure_collection_link():
    if os.path.exists(os.path.join(REPO, "galaxy.yml")) and not os.path.lexists(COLLECTION_LINK):
        os.makedirs(os.path.dirname(COLLECTION_LINK), exist_ok=True)
        try:
            os.symlink(REPO, COLLECTION_LINK)
        except FileExistsError:
            pass    # made concurrently by another pytest worker


if not (os.path.basename(os.path.dirname(os.path.dirname(REPO))) == "ansible_collections"):
    _ensure_collection_link()
    if COLLECTIONS not in sys.path:
        sys.path.insert(0, COLLECTIONS)
