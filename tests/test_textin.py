"""The line-naming checks of rows/textin.py, as plain functions over text."""

from __future__ import annotations

import io

from batchrun.rows.textin import OpenQuote, bad_row, first_undecodable, open_quote, undecodable


def test_open_quote_finds_a_value_left_open_or_too_long() -> None:
    assert open_quote(io.StringIO('id,p\n1,"a\nb"\n2,c\n'), 20) is None
    assert open_quote(io.StringIO('id,p\n1,a\n2,"b\n3,c\n'), 20) == OpenQuote(3, 2, 4, True)
    long = 'id,p\n1,"' + "x\n" * 30 + '"\n'
    assert open_quote(io.StringIO(long), 20) == OpenQuote(2, 1, 32, False)
    assert open_quote(io.StringIO(long), 40) is None
    assert open_quote(io.StringIO('id,p\n1,"a\n2,"b"\n'), 20) == OpenQuote(2, 1, 3, False, True)
    assert open_quote(io.StringIO('id,p\n1,5" screen\n2,"quoted ""twice"""\n'), 20) is None


def test_bad_row_names_where_a_row_starts_and_ends() -> None:
    assert bad_row(io.StringIO("a,b\n1,2\n3,4,5\n")) == (3, 3, 2)
    assert bad_row(io.StringIO('a,b\n1,"x\ny",z\n')) == (2, 3, 1)
    assert bad_row(io.StringIO("a,b\n1,2\n")) is None


def test_undecodable_says_which_byte_and_suggests_gbk_when_it_reads_as_gbk() -> None:
    gbk = "你好".encode("gbk")
    assert undecodable(b"ok\n", "utf-8") is None
    assert undecodable(gbk, "utf-8") == (
        "not valid UTF-8 (byte 0xc4 at column 1); it reads as Chinese GBK text: set input.encoding: gbk (or gb18030)"
    )
    assert undecodable(b"caf\xe9!", "utf-8") == "not valid UTF-8 (byte 0xe9 at column 4); save the file as UTF-8"
    assert first_undecodable([[b"a\n", b"b\n"], [b"c\n", gbk + b"\n"]], "utf-8")[0] == 4
    assert first_undecodable([[b"a\n", b"caf\xe9!\n", gbk + b"\n"]], "utf-8", gbk_only=True)[0] == 3
