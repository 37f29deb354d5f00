"""Which Range headers reach the file server (positions bounded), and the 416 for one outside
the file."""
from __future__ import annotations

from apiarium import byteranges


def test_one_well_formed_byte_range_is_usable():
    for spec in ("bytes=0-", "bytes=0-99", "bytes=-500", "bytes=7-7"):
        assert byteranges.bounded(spec) == spec, spec


def test_anything_else_is_ignored_as_rfc_9110_says():
    for spec in ("bytes=-", "bytes=9-3", "bytes=0-1,5-9", "items=0-9", "bytes=a-b", "0-9", "",
                 "bytes=\u0661-\u0662", "bytes=" + "9" * 5000 + "-3"):
        assert byteranges.bounded(spec) is None, spec


def test_a_position_past_18_digits_is_past_the_end_of_any_file():
    huge = "9" * 5000                          # int() refuses more than 4,300 digits
    end = str(byteranges.PAST_END)
    assert byteranges.bounded(f"bytes=0-{huge}") == f"bytes=0-{end}"       # the whole file
    assert byteranges.bounded(f"bytes={huge}-") == f"bytes={end}-"          # a 416
    assert byteranges.bounded(f"bytes=-{huge}") == f"bytes=-{end}"          # the whole file
    assert byteranges.bounded("bytes=" + "0" * 40 + "5-" + "0" * 30 + "9") == "bytes=5-9"


def test_a_range_outside_the_file_is_a_416_naming_it_briefly():
    err = byteranges.outside("bytes=900-999")
    assert err.status == 416 and err.code == "range_not_satisfiable"
    assert "bytes=900-999" in err.message
    assert len(byteranges.outside("bytes=" + "9" * 5000).message) < 200
