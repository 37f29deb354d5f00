"""Request ids are unique within a process and across forked workers."""
from __future__ import annotations

import os
import re

from apiarium import requestids

SHAPE = re.compile(r"^req_[0-9a-f]{10}[0-9a-f]{7,}$")


def test_ids_have_the_shape_and_never_repeat():
    ids = [requestids.next_id() for _ in range(1000)]
    assert all(SHAPE.match(i) for i in ids)
    assert len(set(ids)) == 1000


def test_a_forked_worker_draws_a_prefix_of_its_own():
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:                                      # the child: one id, written back
        try:
            os.write(write, requestids.next_id().encode())
        finally:
            os._exit(0)
    os.close(write)
    child = os.read(read, 100).decode()
    os.close(read)
    os.waitpid(pid, 0)
    mine = requestids.next_id()
    assert SHAPE.match(child)
    assert child[:14] != mine[:14]                    # another prefix: no collision possible
