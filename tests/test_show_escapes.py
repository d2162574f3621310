"""`batchrun show` and `preview` print ids, prompts and answers, which are anyone's text: a control character in
one (an ANSI escape that clears the screen or retitles the window, a carriage return, a C1 control) is printed
as a visible \\x.. escape, never obeyed by the terminal. `--json` stays the stored record."""

from __future__ import annotations

import re
from pathlib import Path

import orjson

from .helpers import cli, make_job, submit
from .simserver import SimServer

OBEYED = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # what must not reach a terminal (newlines join the lines)
EVIL_ID = "evil\x1b]0;pwned\x07"
EVIL_PROMPT = "say \x1b[2J\x9b31mred\x1b[0m then\x08\x08\x08\x7fdone\r\nok"


def test_show_and_preview_escape_control_characters(tmp_path: Path, sim: SimServer) -> None:
    rows = [{"id": EVIL_ID, "prompt": EVIL_PROMPT + " \x1b[1mbold"}, {"id": "plain", "prompt": "tab\there"}]
    job = make_job(tmp_path, sim.base_url, rows)
    ran = submit(job)  # a real run: the simulated answer echoes the prompt's last line, escapes and all
    assert ran.exit_code == 0, ran.output
    run = str(tmp_path / "runs/job")

    shown = cli("show", run, EVIL_ID)
    assert shown.exit_code == 0, shown.output
    assert not OBEYED.search(shown.stdout), repr(shown.stdout)
    assert shown.stdout.startswith("row 1, id evil\\x1b]0;pwned\\x07: succeeded after 1 attempt")
    assert "    say \\x1b[2J\\x9b31mred\\x1b[0m then\\x08\\x08\\x08\\x7fdone\n    ok \\x1b[1mbold\n" in shown.stdout
    assert "  [simulated sim-small] ok \\x1b[1mbold #" in shown.stdout  # the answer's line
    plain = cli("show", run, "plain")
    assert "    tab\there\n" in plain.stdout  # a tab is text

    record = orjson.loads(cli("show", run, EVIL_ID, "--json").stdout)  # the record as stored
    assert record["custom_id"] == EVIL_ID
    assert "ok \x1b[1mbold #" in record["response"]["body"]["choices"][0]["message"]["content"]

    preview = cli("preview", str(job))
    assert preview.exit_code == 0, preview.output
    assert not OBEYED.search(preview.stdout), repr(preview.stdout)
    assert "id evil\\x1b]0;pwned\\x07: POST" in preview.stdout and "    say \\x1b[2J\\x9b31mred" in preview.stdout
