"""Segment requests run as jobs (POST /v1/jobs) in the replica that accepted them.

`JobRunner.submit` checks a named task exists, saves the request and its uploads as a queued job
(promptseg.serving.job_store) and starts an asyncio task in this replica: at most `slots` jobs run at once, each
through the same `SegmentationService.segment` and `responses.segment_response` as POST /v1/segment, its uploads
read back from the job's folder. The result is written to the job's folder (the `SegmentResponse` whose `request_id`
is the submitting request's), its failure as the `Problem` the synchronous route would have answered. While a job
waits or runs, a heartbeat touches its state every `HEARTBEAT_S` and checks for a cancel marker that any replica may
have written; a cancelled job's task is cancelled here (computation already handed to a thread finishes, its result is
discarded). A job's uploads are deleted when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from fastapi import UploadFile

from promptseg.inference.budget import Limits, OverBudget
from promptseg.inference.errors import InvalidInput
from promptseg.serving.api_models import JobInfo, Problem, SegmentRequest, SegmentResponse
from promptseg.serving.job_store import FINISHED, HEARTBEAT_S, JobRecord, JobStore, UnknownJob
from promptseg.serving.responses import segment_response
from promptseg.serving.segmentation import SegmentationService
from promptseg.serving.served_tasks import UnknownTask
from promptseg.serving.uploads import PromptFiles, SegmentFiles

logger = logging.getLogger(__name__)
UPLOAD_FIELDS = ("volume", "queries", "prompt_images", "prompt_masks")


def failure_problem(error: Exception) -> Problem:
    """The problem POST /v1/segment would answer for `error`."""
    if isinstance(error, OverBudget):
        return Problem.of(413, "over_budget", error.problem, error.file)
    if isinstance(error, InvalidInput):
        return Problem.of(422, "invalid_input", error.problem, error.file)
    if isinstance(error, UnknownTask):
        return Problem.of(404, "unknown_task", f"no task {error.task_id!r} is registered")
    return Problem.of(500, "internal_error", f"the job failed ({type(error).__name__}); see the endpoint's logs")


class JobRunner:
    """The jobs this replica accepted: their asyncio tasks and the slots they wait for; each job works within
    `limits` (larger than a request's: fewer jobs run at once)."""

    def __init__(self, store: JobStore, service: SegmentationService, slots: int, limits: Limits) -> None:
        self.store, self.service, self.limits = store, service, limits
        self._slots = asyncio.Semaphore(slots)
        self._tasks: dict[str, asyncio.Task] = {}

    async def submit(self, request: SegmentRequest, files: SegmentFiles, request_id: str) -> JobInfo:
        """Save the job and start it; an unknown task is refused now (`UnknownTask`)."""
        if request.task_id is not None:
            self.service.task_info(request.task_id)
        saved = [(field, upload.filename or field, upload.file) for field, upload in _named_uploads(files)]
        record = await asyncio.to_thread(self.store.create, request, saved)
        job_id = record.info.job_id
        self._tasks[job_id] = asyncio.create_task(self._run(record, request_id))
        self._tasks[job_id].add_done_callback(lambda task: self._ended(job_id, task))
        return record.info

    def _ended(self, job_id: str, task: asyncio.Task) -> None:
        self._tasks.pop(job_id, None)
        if task.cancelled():  # cancelled before it started: its uploads are all there is to clean
            self.store.drop_uploads(job_id)

    async def cancel_or_delete(self, job_id: str) -> JobInfo | None:
        """Cancel an unfinished job (→ its state, cancelled; at once when it runs here, else at its runner's next
        heartbeat) or delete a finished one with its files (→ None)."""
        if self.store.info(job_id).state in FINISHED:
            await asyncio.to_thread(self.store.delete, job_id)
            return None
        info = self.store.cancel(job_id)
        if job_id in self._tasks:
            self._tasks[job_id].cancel()
        return info

    async def _run(self, record: JobRecord, request_id: str) -> None:
        """Wait for a slot, segment, and write the outcome (nothing once the job was deleted meanwhile)."""
        job_id = record.info.job_id
        heartbeat = asyncio.create_task(self._heartbeat(job_id, asyncio.current_task()))
        try:
            with contextlib.suppress(FileNotFoundError):
                try:
                    async with self._slots:
                        record = self.store.update(record, "running")
                        response = await self._segment(record, request_id)
                    if not self.store.cancel_requested(job_id):
                        await asyncio.to_thread(self.store.save_result, job_id, response.model_dump_json().encode())
                        self.store.update(record, "succeeded")
                except asyncio.CancelledError:
                    self.store.update(record, "cancelled")
                except Exception as error:
                    if not isinstance(error, InvalidInput | UnknownTask):
                        logger.exception("job %s failed", job_id)
                    self.store.update(record, "failed", failure_problem(error))
        finally:
            heartbeat.cancel()
            self.store.drop_uploads(job_id)

    async def _heartbeat(self, job_id: str, work: asyncio.Task) -> None:
        """Touch the job's state while it waits or runs; cancel `work` when the job was cancelled or deleted."""
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            try:
                self.store.heartbeat(job_id)
                cancelled = self.store.cancel_requested(job_id)
            except (FileNotFoundError, UnknownJob):
                cancelled = True
            if cancelled:
                work.cancel()
                return

    async def _segment(self, record: JobRecord, request_id: str) -> SegmentResponse:
        request = SegmentRequest.model_validate(record.request)
        job_id = record.info.job_id
        with contextlib.ExitStack() as stack:
            uploads: dict[str, list[UploadFile]] = {field: [] for field in UPLOAD_FIELDS}
            for index, (field, name) in enumerate(record.uploads):
                content = stack.enter_context(self.store.upload_path(job_id, index).open("rb"))
                uploads[field].append(UploadFile(content, filename=name))
            volume = uploads["volume"][0] if uploads["volume"] else None
            prompts = PromptFiles(uploads["prompt_images"], uploads["prompt_masks"])
            files = SegmentFiles(uploads["queries"], volume, prompts)
            outcome = await self.service.segment(request, files, {"job_id": job_id}, self.limits)
        return await segment_response(outcome, request_id)


def _named_uploads(files: SegmentFiles) -> list[tuple[str, UploadFile]]:
    """(form field, upload) of every file of the request, in `UPLOAD_FIELDS` order."""
    fields = {
        "volume": [files.volume] if files.volume is not None else [],
        "queries": files.queries,
        "prompt_images": files.prompts.images,
        "prompt_masks": files.prompts.masks,
    }
    return [(field, upload) for field in UPLOAD_FIELDS for upload in fields[field]]
