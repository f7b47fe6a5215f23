# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One way to run external commands (ip, tc), and it knows about check mode.

Every command is declared as a query (reads state, always runs) or a change (alters state:
recorded, and not run in check mode). Nothing that changes a host can run in check mode by
accident, and the result can list exactly the commands a real run would execute.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json


class CommandError(Exception):
    def __init__(self, args, rc, out, err):
        self.args_list = list(args)
        self.rc = rc
        self.out = out
        self.err = err
        super(CommandError, self).__init__("%s failed (rc=%s): %s" % (
            " ".join(self.args_list), rc, (err or out or "").strip()))


class CommandRunner:
    def __init__(self, module):
        self.module = module
        self.commands = []  # state-changing commands, run or (in check mode) planned

    def query(self, args, check_rc=True):
        rc, out, err = self.module.run_command(list(args))
        if check_rc and rc != 0:
            raise CommandError(args, rc, out, err)
        return rc, out, err

    def query_json(self, args):
        out = self.query(args)[1]
        return json.loads(out) if out.strip() else []

    def change(self, args, check_rc=True):
        self.commands.append(" ".join(args))
        if self.module.check_mode:
            return 0, "", ""
        rc, out, err = self.module.run_command(list(args))
        if check_rc and rc != 0:
            raise CommandError(args, rc, out, err)
        return rc, out, err
