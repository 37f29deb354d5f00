"""Which Range headers reach the file server, and the 416 for one outside the file."""
from __future__ import annotations

from apiarium import byteranges


def test_one_well_formed_byte_range_is_usable():
    for spec in ("bytes=0-", "bytes=0-99", "bytes=-500", "bytes=7-7"):
        assert byteranges.usable(spec), spec


def test_anything_else_is_ignored_as_rfc_9110_says():
    for spec in ("bytes=-", "bytes=9-3", "bytes=0-1,5-9", "items=0-9", "bytes=a-b", "0-9", ""):
        assert not byteranges.usable(spec), spec


def test_a_range_outside_the_file_is_a_416_naming_it_briefly():
    err = byteranges.outside("bytes=900-999")
    assert err.status == 416 and err.code == "range_not_satisfiable"
    assert "bytes=900-999" in err.message
    assert len(byteranges.outside("bytes=" + "9" * 5000).message) < 200
