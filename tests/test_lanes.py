"""The lanes on their own: what an answer means comes back as outcomes, with no run loop to call back into."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import cast

from batchrun.lanes import LaneContext, Row
from batchrun.lanes.online import OnlineLane
from batchrun.lanes.outcome import Answered, Done, Failed, RetryLater, SendAgain
from batchrun.lanes.tasks import UNCONFIRMED_LIMIT, Task, TaskLane, task_of
from batchrun.limits.keypool import KeyPool, Member
from batchrun.limits.throttle import Throttle, Ticket
from batchrun.providers.transport import Reply
from batchrun.retry import Verdict
from batchrun.rows.request import Request
from batchrun.spec.parse import load_spec
from batchrun.spec.presets import PRESETS
from batchrun.store.checkpoint import Checkpoint

from .helpers import make_job

TICKET = cast(Ticket, None)  # neither lane reads it unless the provider takes the row


def lane_context(tmp_path: Path) -> LaneContext:
    spec = load_spec(make_job(tmp_path, "http://127.0.0.1:1/v1"))
    throttle = Throttle(spec.limits, spec.limits.tpm_accounting, lambda _: None)
    return LaneContext(
        spec=spec,
        base_url="http://127.0.0.1:1/v1",
        errors=PRESETS["simulated"].errors,
        pool=KeyPool([Member("KEY", lambda: None, throttle)]),
        checkpoint=cast(Checkpoint, None),  # only a submission the provider takes writes to it
        tasks={},
        build=lambda raw: Request(raw.row, str(raw.row), "m", b"{}", 1, 1),
        log=lambda _: None,
        t_wall0=0.0,
    )


def request(row: int, *parts: Request) -> Request:
    return Request(row, f"r{row}", "m", b"{}", 3, 0, parts=parts)


def test_the_online_lane_says_what_an_answer_means(tmp_path: Path) -> None:
    lane = OnlineLane(lane_context(tmp_path))
    shared = Row(request(1, request(1), request(2)), attempts=2, rate_limited=1)

    async def answers() -> None:
        split = await lane.answer(shared, Reply(400, {}, {"error": {"message": "bad input"}}, 0.1), TICKET)
        assert len(split) == 1 and isinstance(split[0], SendAgain)
        assert [r.request.row for r in split[0].rows] == [1, 2]
        assert split[0].rows[0].shared == {"attempts": 2, "rate_limited": 1} and split[0].rows[1].shared is None

        body = {
            "data": [{"index": 0, "embedding": [0.1]}, {"index": 1, "embedding": [0.2]}],
            "usage": {"total_tokens": 6},
        }
        done = await lane.answer(shared, Reply(200, {}, body, 0.1), TICKET)
        assert all(isinstance(d, Done) and d.decision is None for d in done)
        assert [(d.part.row, d.batch) for d in done if isinstance(d, Done) and d.part] == [
            (1, {"index": 0, "size": 2}),
            (2, {"index": 1, "size": 2}),
        ]

        plain = Row(request(3))
        (retry,) = await lane.answer(plain, Reply(500, {}, {}, 0.1), TICKET)
        assert isinstance(retry, Answered) and retry.row is plain and retry.decision.verdict is Verdict.RETRY

    asyncio.run(answers())


def test_the_task_lane_holds_unknown_task_ids_until_a_poll_proves_the_url(tmp_path: Path) -> None:
    lane = TaskLane(lane_context(tmp_path))

    def held(row: int) -> Task:
        task = task_of(Row(request(row), attempts=1))
        task.task_id, task.submitted_at = f"t{row}", time.time()
        return task

    unknown = Reply(404, {}, {"error": {"message": "no such task"}}, 0.1)
    for row in range(1, UNCONFIRMED_LIMIT):
        assert list(lane._task_answer(held(row), unknown)) == []
    found = lane._task_answer(held(99), Reply(200, {}, {"task_status": "PROCESSING"}, 0.1))
    assert [(o.row.request.row, o.immediately) for o in found if isinstance(o, RetryLater)] == [
        (row, True) for row in range(1, UNCONFIRMED_LIMIT)
    ]
    assert len(found) == UNCONFIRMED_LIMIT - 1 and lane.poller.pending == 1  # the found task is polled again

    wrong_url = TaskLane(lane_context(tmp_path))
    outcomes = [wrong_url._task_answer(held(row), unknown) for row in range(1, UNCONFIRMED_LIMIT + 1)]
    assert all(not o for o in outcomes[:-1])
    (failed,) = outcomes[-1]
    assert isinstance(failed, Failed) and "check provider.base_url" in str(failed.error)
