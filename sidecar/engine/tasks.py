"""Finding the caller's task by the id it names.

Task ids are no oracle: another identity's task is not found, exactly as an id nobody holds
(same status, reason and message). A task id the caller chooses lives in the caller's own
namespace (`<name>@<tag>`), so nobody can take it first (docs/api.md "Task ids").
"""

from __future__ import annotations

import base64
import functools
import hashlib
from collections.abc import Mapping

from ..errors import FailedPrecondition, InvalidArgument, NotFound, Reason
from ..model import Identity, Task
from ..store import Store
from ..validation import check_task_id
from .live import LiveState


class TaskLookup:
    def __init__(
        self, live: LiveState, store: Store, lost: Mapping[str, str] | None = None
    ) -> None:
        """`lost`: why recently ended tasks ended, when their state does not say (a
        GrantStream closed, sidecar.engine.streams), by task id."""
        self.live = live
        self.store = store
        self.lost: Mapping[str, str] = lost if lost is not None else {}

    async def own(self, identity: Identity, task_id: str) -> Task | None:
        """The caller's task named `task_id` (live or stored, in any state), or None. Another
        identity's task is None too: unknown and foreign ids get the same answer, so a task
        id is no oracle (docs/security.md)."""
        check_task_ref(task_id)
        task = self.live.tasks.get(task_id)  # the usual case: a live task by its full id
        if task is not None and task.subject == identity.subject:
            return task
        names = [task_id] if "@" in task_id else [task_id, owned_task_id(identity.subject, task_id)]
        for name in names[1:]:
            task = self.live.tasks.get(name)
            if task is not None and task.subject == identity.subject:
                return task
        for name in names:
            stored = await self.store.get_task(name)
            if stored is not None and stored.subject == identity.subject:
                return self.live.tasks.get(stored.task_id) or stored
        return None

    async def active(self, identity: Identity, task_id: str) -> Task:
        """The caller's active task, or the precise error saying why not."""
        task = await self.own(identity, task_id)
        if task is None:
            raise NotFound(f"no task {task_id}", Reason.TASK_NOT_FOUND)
        if task.active and task.task_id not in self.live.tasks:
            lost = self.lost.get(task.task_id)
            if lost:  # its GrantStream closed: ended in memory, the store not caught up yet
                raise FailedPrecondition(
                    f"task {task.task_id} has ended (crashed: {lost})", Reason.TASK_INACTIVE
                )
            # Live state holds every active task this sidecar serves: an active task in
            # the store is another sidecar's (fleet) or is ending right now.
            raise FailedPrecondition(
                f"task {task_id} is not served by this sidecar", Reason.TASK_INACTIVE
            )
        if not task.active:
            raise self.ended(task)
        return task

    def ended(self, task: Task) -> FailedPrecondition:
        if not task.end_detail:
            task.end_detail = self.lost.get(task.task_id, "")
        why = task.why_ended(self.live.heartbeat_misses)
        return FailedPrecondition(f"task {task.task_id} has ended ({why})", Reason.TASK_INACTIVE)


def owned_task_id(subject: str, chosen: str) -> str:
    """The id of the task a caller named `chosen`: `<chosen>@<tag>`, where the tag (16
    base32 characters of SHA-256 of the subject) puts it in the caller's own namespace."""
    return f"{chosen}@{_owner_tag(subject)}"


@functools.lru_cache(maxsize=1024)
def _owner_tag(subject: str) -> str:
    # Cached: a busy agent names its chosen task on every request; subjects are few.
    digest = hashlib.sha256(subject.encode()).digest()[:10]
    return base64.b32encode(digest).decode("ascii").lower()


def check_task_ref(task_id: str) -> None:
    """A task id as an RPC names it: a generated or chosen id, optionally `@<tag>`."""
    name, at, tag = task_id.partition("@")
    check_task_id(name)
    if at and not (len(tag) == 16 and tag.isalnum() and tag.islower()):
        raise InvalidArgument(
            "task_id must be 1-128 of A-Z a-z 0-9 . _ : - (starting with a letter or digit), "
            "optionally followed by the @tag BeginTask returned",
            Reason.INVALID_TASK,
        )
