"""The batch lane (`provider.mode: batch`): the job goes through the provider's Batch API at its batch price, and
ends with the same run directory as any other lane: one final record per row, usage, resumable.

The loop: cut the pending rows into provider-legal shards (shards.py), and for each shard upload it, create its
batch, poll it, and harvest its output and error files into final records. Every step is an event in
batches.jsonl, fsynced before the next, so a resumed run carries each shard on from where it stopped. A row a
batch did not finish (expired, cancelled, a batch refused as a whole) is simply still pending, and goes into a
later shard, within `retry.max_attempts` shards; a line a batch refused gets a failure record naming the line.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import BatchrunError, FatalProviderError
from ..providers import make_auth
from ..providers.batches import BatchAPIClient, DownloadError
from ..providers.transport import NO_ANSWER, Http, Network, Reply
from ..records import NO_OUTPUT, error, record, response
from ..retry import PROXY_AUTH, Verdict, classify, error_details, proxy_failure
from ..rows.request import BadRow, Request
from ..rows.sources import iter_rows
from ..spec.presets import PRESETS
from ..store.rundir import BATCHES, SHARDS, RunState, complete_lines
from ..text.words import plural
from .batchrules import check_file_room, refusal_hint
from .context import RunContext
from .shards import (
    FINAL_STATUSES,
    ShardIndex,
    ShardState,
    ShardWriter,
    Tries,
    custom_id_row,
    cut_text,
    read_shards,
    shard_rows,
)
from .shared import RunControl

NOT_FINISHED = "batch_unfinished"
LIVE = ("upload", "create", "poll", "harvest")  # steps that wait on the provider: the shard's rows are out
REFUSED = frozenset({400, 405, 413, 415, 422})  # an upload or create refused for what it is, not for now
DEAD_AFTER = 3  # calls in a row without any HTTP answer, before any came, that stop the run (a dead endpoint)


class BatchRun(RunControl):
    """A run of the batch lane; the session drives it as it drives the online run loop."""

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        preset = PRESETS[self.spec.provider.name]
        assert preset.batch is not None
        self.api, self.errors = preset.batch, preset.errors
        if self.spec.batch.max_lines is not None:  # the spec may ask for smaller files, never larger ones
            cap = min(self.spec.batch.max_lines, self.api.max_lines)
            self.api = dataclasses.replace(
                self.api, max_lines=cap, max_embedding_lines=min(cap, self.api.lines_for("embeddings"))
            )
        # one account's batches: the first key's
        self.base_url, self.auth = ctx.base_url, make_auth(ctx.keys[0][1], self.spec.provider.auth)
        self.line_url = self.spec.batch.line_url or self.api.line_url(self.spec.endpoint)
        self.shards = read_shards(line for _, line in complete_lines(ctx.checkpoint.path / BATCHES))
        # shards an earlier session uploaded but never learnt a batch of: a kill may have come between the create
        # call and its event, so the provider is asked for a batch of that file before one is made
        self.unsure = {s.index for s in self.shards.values() if s.file_id is not None and s.batch_id is None}
        self.tries = Tries()  # shards each row has been in, to cap resubmission
        self.held = 0  # rows in batches at the provider (the progress line's `rows in batches`)
        self._wake = asyncio.Event()
        self.hold_off = 0.0  # monotonic time before which no new batch is made (the provider's queue is full)
        deadline = self.spec.batch.deadline_s
        self.deadline = time.monotonic() + deadline if deadline is not None else None
        self.past_deadline = False
        # rows a batch did not finish go online (the session runs them once this loop is done) rather than into
        # a new batch: with batch.fallback: online, and for everything once the deadline has passed
        self.online_after = self.spec.batch.fallback == "online"
        self.repairing = 0  # answers of the shard being harvested that did not fit the schema
        self.over_budget = False  # the last round of shards stopped at limits.max_cost
        self.answered = False  # some call of this session got an HTTP answer: the endpoint (and proxy) are there
        self.unanswered = 0  # calls in a row that got none, before any did

    # --- what the session calls ------------------------------------------------------------------------

    async def run(self) -> None:
        if not await self.preflight():
            return
        provider = self.spec.provider
        http = Http(4, Network(provider.proxy, provider.ca_bundle, trust_env=provider.simulate is None))
        self.client = BatchAPIClient(http, self.base_url, self.auth, self.spec.retry.timeout_s)
        flusher = asyncio.ensure_future(self.flush_forever())
        try:
            await self._loop()
        except BatchrunError as exc:
            self.failed(exc)
        except Exception as exc:  # a bug: stop and keep what is recorded rather than lose a row silently
            self.crashed(exc)
        finally:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
            await http.close()

    def interrupt(self, terminal: bool = True) -> None:
        """Ctrl-C / SIGTERM: stop polling; the batches go on at the provider and a resumed run harvests them."""
        self.log("stopping: the batches go on at the provider; the same command resumes polling them")
        self.stop(RunState.INTERRUPTED, "interrupted")

    def stopped(self) -> None:
        self._wake.set()

    def facts(self) -> dict[str, Any]:
        return {"batches": self._summary()}

    @property
    def lane(self) -> BatchRun:  # the session asks its lane how much is still out
        return self

    @property
    def leaves_rows_online(self) -> bool:
        """Whether rows left pending at the end go through the online lane (batch.fallback, the deadline)."""
        return self.online_after or self.past_deadline

    # --- the loop ------------------------------------------------------------------------------------------

    async def _loop(self) -> None:
        self._count_tries()
        delay = self.spec.batch.poll_s
        while not self.stopping:
            if self.deadline is not None and not self.past_deadline and time.monotonic() >= self.deadline:
                await self._pass_deadline()
            progressed = await self._advance_all()
            if self.stopping:
                return
            if not any(s.next_step in LIVE for s in self.shards.values()):
                if (wait := self.hold_off - time.monotonic()) > 0:
                    self._wake.clear()
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), wait)
                    continue
                if self._write_shards():
                    delay = self.spec.batch.poll_s
                    continue
                if self.over_budget:  # the rows left would pass limits.max_cost
                    assert self.budget is not None
                    self.failed(self.budget.reached())
                return  # every row recorded (or left for a later submit, past --limit)
            delay = self.spec.batch.poll_s if progressed else min(delay * 1.5, self.spec.batch.max_poll_s)
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def _advance_all(self) -> bool:
        """Take every shard one step on (or several, where nothing waits on the provider); True if any moved."""
        moved = False
        for shard in sorted(self.shards.values(), key=lambda s: s.index):
            while not self.stopping:
                step = shard.next_step
                if step == "done":
                    break
                before = (step, shard.status, dict(shard.counts))
                await getattr(self, f"_{step}")(shard)
                after = (shard.next_step, shard.status, dict(shard.counts))
                if after == before:
                    break
                moved = True
                if step == "poll":
                    break  # one poll per shard per round
        live = [s for s in self.shards.values() if s.next_step in LIVE]
        self.held = sum(s.lines for s in live)
        answered = sum(s.counts.get("completed", 0) + s.counts.get("failed", 0) for s in live)
        self.progress.tasks = self.held
        self.progress.tasks_label = f"rows in batches ({answered:,} answered there)"
        return moved

    def _event(self, shard: ShardState, event: str, **facts: Any) -> None:
        self.checkpoint.append_batch_event({"shard": shard.index, "event": event, **facts})

    def _write_shards(self) -> bool:
        """Cut the pending rows (within their tries) into new shards; False if there were none."""
        # called only with no shard out at the provider: every row without a final record is pending
        assert not any(s.next_step in LIVE for s in self.shards.values())
        done, limit = self.state.done, self.spec.retry.max_attempts
        first = max(self.shards, default=0) + 1
        writer = ShardWriter(self.checkpoint.path / SHARDS, self.api, self.spec.endpoint, first, self.line_url)
        written: list[Any] = []
        build = self.build  # with structured output, a row being repaired is asked its next question
        self.over_budget = False
        caps: dict[str, int] = dict(self.api.queue_caps)
        queued: dict[str, int] = {}  # rows of each capped model in this round's batches
        for raw in iter_rows(self.spec.input, skip=done.__contains__):
            if self.last_row is not None and raw.row > self.last_row:
                break
            built = build(raw)
            if isinstance(built, BadRow):
                self.ledger.record_bad(built)
                continue
            if self.ledger.from_cache(built):  # an earlier run paid for this answer
                continue
            if self.past_deadline or (self.online_after and self.tries[built.row]):
                continue  # left pending: the online lane takes it once the batches are done
            if built.files:  # its local images read in now, as its line is written
                sent = self.ctx.prepared.builder.ready(built)
                if isinstance(sent, BadRow):
                    self._fail_row(built, sent.code, sent.message, None)
                    continue
                built = sent
            if (problem := writer.problem(built)) is not None:  # fits no file of the provider's: say why
                self._fail_row(built, *problem, None)
                continue
            if self.tries[built.row] >= limit:
                self._fail_row(built, NOT_FINISHED, f"no batch finished this row in {limit} shards", None)
                continue
            cap = caps.get(built.model)
            if cap is not None:
                if queued.get(built.model, 0) >= cap:
                    continue  # the provider queues no more of this model at once: a later round takes it
                queued[built.model] = queued.get(built.model, 0) + 1
            if self.budget is not None and not self.budget.reserve(built):
                self.over_budget = True  # the rest wait: what is out may cost less than its worst case
                break
            if (closed := writer.add(built)) is not None:
                written.append(closed)
            self.tries.add(built.row)
        if (last := writer.close()) is not None:
            written.append(last)
        for shard in written:
            state = ShardState(shard.index, str(shard.path.relative_to(self.checkpoint.path)), shard.lines)
            state.cut = shard.cut
            self._event(state, "written", path=state.path, lines=shard.lines, bytes=shard.bytes, cut=shard.cut)
            self.shards[shard.index] = state
        if written:
            cuts = sorted({cut_text(s.cut, self.api, s.lines) for s in written[:-1]})
            why = f" (cut {'; '.join(cuts)})" if cuts else ""
            self.log(
                f"wrote {plural(sum(s.lines for s in written), 'row')} into {plural(len(written), 'batch file')}{why}"
            )
        return bool(written)

    def _rows_path(self, shard: ShardState) -> Path:
        return self.checkpoint.path / shard.path.replace(".jsonl", ".rows")

    async def _pass_deadline(self) -> None:
        """batch.deadline_s has passed: cancel the batches still going (what they finished is harvested), make no
        new ones, and leave the rest to the online lane."""
        self.past_deadline = True
        live = [s for s in self.shards.values() if s.next_step in LIVE]
        self.log(f"batch.deadline_s passed: cancelling {len(live)} batch(es); the rows they did not finish go online")
        for shard in live:
            if shard.batch_id is not None and shard.status not in FINAL_STATUSES:
                await self.client.cancel(shard.batch_id)
            elif shard.batch_id is None:  # never created: nothing at the provider to wait for
                self._event(shard, "harvested", status="not_sent", recorded=0, resend=shard.lines)
                shard.harvested, shard.status = True, "not_sent"

    def _count_tries(self) -> None:
        for shard in self.shards.values():
            rows = self._rows_path(shard)
            if rows.exists():
                for row, _, _ in shard_rows(rows):
                    self.tries.add(row)

    # --- one step of a shard ------------------------------------------------------------------------------

    async def _upload(self, shard: ShardState) -> None:
        if self.api.max_files is not None:  # Kimi holds 1,000 batch files per organisation: count them first
            check_file_room(self.api, await self.client.count_files("batch"), self.base_url)
        reply = await self.client.upload(self.checkpoint.path / shard.path)
        file_id = self._id_of(reply, "upload of " + shard.path)
        if file_id is not None:
            self._event(shard, "uploaded", file_id=file_id)
            shard.file_id = file_id

    async def _create(self, shard: ShardState) -> None:
        assert shard.file_id is not None
        if shard.index in self.unsure:
            self.unsure.discard(shard.index)
            found = await self.client.find(shard.file_id)
            if found is not None:
                self._event(shard, "created", batch_id=found)
                shard.batch_id = found
                self.log(f"shard {shard.index}: found its batch {found}, created before the run was stopped")
                return
        metadata = {"batchrun_job": self.spec.name, "shard": str(shard.index)}
        extra = dict(self.api.create_extra)
        if self.api.replace_model:  # SiliconFlow: the create call names the file's one model
            extra["replace"] = {"model": next(shard_rows(self._rows_path(shard)))[2]}
        reply = await self.client.create(
            shard.file_id, self.line_url, self.spec.batch.completion_window, metadata, extra
        )
        batch_id = self._id_of(reply, f"creating the batch of shard {shard.index}")
        if batch_id is not None:
            self._event(shard, "created", batch_id=batch_id)
            shard.batch_id = batch_id
            self.log(f"shard {shard.index}: batch {batch_id} created ({plural(shard.lines, 'row')})")

    async def _poll(self, shard: ShardState) -> None:
        assert shard.batch_id is not None
        reply = await self.client.retrieve(shard.batch_id)
        if self._id_of(reply, f"polling batch {shard.batch_id}") is None or not isinstance(reply.body, dict):
            return
        status = str(reply.body.get("status"))
        counts = {k: int(v) for k, v in (reply.body.get("request_counts") or {}).items() if isinstance(v, int)}
        if status != shard.status or counts != shard.counts:
            self._event(shard, "polled", status=status, **counts)
            shard.status, shard.counts = status, counts

    async def _harvest(self, shard: ShardState) -> None:
        """Every line of the output and error files becomes its row's final record; rows the batch did not
        finish stay pending for a later shard. Harvesting twice (a kill midway) records nothing twice."""
        assert shard.batch_id is not None
        reply = await self.client.retrieve(shard.batch_id)
        if self._id_of(reply, f"reading batch {shard.batch_id}") is None or not isinstance(reply.body, dict):
            return
        batch = reply.body
        index = ShardIndex(self._rows_path(shard))
        recorded = self.repairing = 0
        try:
            for file_id in (batch.get("output_file_id"), batch.get("error_file_id")):
                if isinstance(file_id, str) and file_id:
                    async for line in self.client.lines(file_id):
                        recorded += self._record_line(line, index, shard.batch_id)
        except (DownloadError, *NO_ANSWER) as exc:
            self.log(f"shard {shard.index}: reading its results failed ({exc}); trying again at the next poll")
            index.close()
            return
        errors = (batch.get("errors") or {}).get("data") or []
        for item in errors if isinstance(errors, list) else []:
            number = item.get("line") if isinstance(item, dict) else None
            if isinstance(number, int) and 1 <= number <= len(index):
                row = index.rows[number - 1]
                ids = index.ids(row)
                if ids is None or row in self.state.done:
                    continue
                message = f"the batch refused line {number} of {shard.path}: {item.get('message')}"
                code = str(item.get("code") or "invalid_batch_line")
                self._commit(row, ids.custom_id, ids.model, None, error(code, message, None, self.tries[row]))
                recorded += 1
        index.close()
        rows = index.rows
        resend = sum(1 for row in rows if row not in self.state.done)
        status = str(batch.get("status"))
        codes = (
            {str(item.get("code")) for item in errors if isinstance(item, dict)} if isinstance(errors, list) else set()
        )
        if "token_limit_exceeded" in codes:  # the provider's queue is full: wait and create later, not a try
            for row in rows:
                self.tries.sub(row)
            self.hold_off = time.monotonic() + self.spec.batch.max_poll_s
            self.log(
                f"shard {shard.index}: the provider's queue of enqueued tokens is full; sending its rows again in "
                f"{self.spec.batch.max_poll_s:g} s"
            )
        self._event(shard, "harvested", status=status, recorded=recorded, resend=resend)
        shard.harvested, shard.status = True, status
        if self.repairing:
            self.log(f"shard {shard.index}: {self.repairing:,} answers did not fit the schema; they are asked again")
        if resend > self.repairing:
            self.log(
                f"shard {shard.index}: batch {status}; {resend - self.repairing:,} rows it did not finish go into a "
                "new batch"
            )

    async def _clean(self, shard: ShardState) -> None:
        """Delete the uploaded file once its batch is harvested (Zhipu keeps at most 1,000 files)."""
        if shard.file_id is not None and not self.spec.batch.keep_files:
            await self.client.delete(shard.file_id)  # a failure leaves the file; nothing depends on it
        self._event(shard, "deleted")
        shard.deleted = True

    # --- records -------------------------------------------------------------------------------------------

    def _record_line(self, line: Mapping[str, Any], index: ShardIndex, batch_id: str) -> int:
        row = custom_id_row(str(line.get("custom_id")))
        ids = index.ids(row) if row is not None and row not in self.state.done else None
        if row is None or ids is None:
            return 0
        custom_id, model, cache_key = ids
        images = index.images(row) if self.spec.input.images else []
        resp = line.get("response") if isinstance(line.get("response"), dict) else None
        status = resp.get("status_code") if resp else None
        body = resp.get("body") if resp else None
        decision = classify(
            status if isinstance(status, int) else None, body, {}, None if resp else "batch_error", self.errors
        )
        if decision.verdict is Verdict.OK:
            output, err = NO_OUTPUT, None
            if self.repairs is not None:  # structured output: keep it, ask again (a later shard), or fail the row
                judged = self.repairs.judge(body)
                if judged.problem is not None:
                    if self.repairs.note(row, judged, body, batch_id):
                        self.repairing += 1
                        return 0
                    decision, path = self.repairs.failure(judged)
                    err = error(decision.code, decision.message, 200, self.tries[row])
                    err["path"] = path
                output = judged.value if err is None else NO_OUTPUT
            answer = response(200, resp.get("request_id") if resp else None, body)
            self._commit(row, custom_id, model, answer, err, batch_id=batch_id, output=output, images=images)
            if err is None:
                self.ledger.remember(cache_key, model, answer, output)
            return 1
        if decision.verdict is Verdict.RETRY and self.tries[row] < self.spec.retry.max_attempts:
            return 0  # a 429 or 5xx inside the batch: the row goes into a later shard
        err = line.get("error") if isinstance(line.get("error"), dict) else None
        code = str((err or {}).get("code") or decision.code)
        message = str((err or {}).get("message") or decision.message)
        resp_rec = response(status, resp.get("request_id"), body) if resp and isinstance(status, int) else None
        self._commit(
            row,
            custom_id,
            model,
            resp_rec,
            error(code, message, status if isinstance(status, int) else None, self.tries[row]),
            batch_id=batch_id,
            images=images,
        )
        return 1

    def _commit(
        self,
        row: int,
        custom_id: str,
        model: str,
        resp: Any,
        err: Any,
        *,
        batch_id: str | None = None,
        output: Any = NO_OUTPUT,
        images: Any = (),
    ) -> None:
        rec = record(row, custom_id, model, resp, err, attempts=max(1, self.tries[row]), output=output)
        if batch_id is not None:
            rec["batch_id"] = batch_id
        if images:  # each image's reference (never its base64)
            rec["images"] = list(images)
        self.ledger.commit(rec, failed=err is not None)

    def _fail_row(self, request: Request, code: str, message: str, status: int | None) -> None:
        self._commit(
            request.row,
            request.custom_id,
            request.model,
            None,
            error(code, message, status, self.tries[request.row]),
            images=request.images,
        )

    def _id_of(self, reply: Reply, what: str) -> str | None:
        """The `id` of a good answer; a refusal that dooms every call stops the run, anything else waits a round."""
        if reply.status == 200 and isinstance(reply.body, dict) and isinstance(reply.body.get("id"), str):
            self.answered = True
            return str(reply.body["id"])
        self.answered = self.answered or reply.status is not None
        self.unanswered = 0 if self.answered else self.unanswered + 1
        if self.unanswered >= DEAD_AFTER:  # as the online lane's first rows: nothing there answers at all
            at = "the proxy" if proxy_failure(reply.error) else self.base_url
            raise FatalProviderError(
                f"{what}: {reply.error}, {self.unanswered} times and never an answer: check {at} and the network; "
                "nothing was recorded, so the same command resumes once it answers"
            )
        refused = classify(reply.status, reply.body, reply.headers, reply.error)
        if refused.code == PROXY_AUTH:  # a proxy that wants credentials: no call gets past it
            raise FatalProviderError(f"{what}: {refused.message}")
        if reply.status in (401, 403):
            code, message = error_details(reply.body)
            raise FatalProviderError(
                f"{what}: HTTP {reply.status} ({code}: {message}); check {self.spec.provider.api_key_env} and that "
                "the account may use the Batch API"
            )
        if reply.status == 404 and what.startswith(("upload", "creating")):
            raise FatalProviderError(
                f"{what}: HTTP 404 at {self.base_url}: this base URL has no Batch API; check provider.base_url"
            )
        if reply.status in REFUSED and what.startswith(("upload", "creating")):
            code, message = error_details(reply.body)
            raise FatalProviderError(
                f"{what}: HTTP {reply.status} ({code}: {message}): {refusal_hint(self.api, code, message)}; nothing "
                "was recorded, so the same command resumes once it is fixed"
            )
        detail = reply.error or f"HTTP {reply.status}: {error_details(reply.body)[1]}"
        self.log(f"{what}: {detail}; trying again at the next poll")
        return None

    def _summary(self) -> dict[str, Any]:
        steps: dict[str, int] = {}
        for shard in self.shards.values():
            steps[shard.next_step] = steps.get(shard.next_step, 0) + 1
        return {"shards": len(self.shards), "by_step": steps, "rows_out": self.held}
