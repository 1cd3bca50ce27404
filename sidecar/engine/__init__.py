"""The engine: the order of a grant (`core`), and each concept it orchestrates in a module
of its own (docs/architecture.md, "The engine")."""

from .core import Engine
from .introspection import Introspection
from .listeners import GrantEndListener, GrantEndListeners
from .live import RECENTLY_ENDED
from .outcome import GrantOutcome, reason_code
from .settings import EngineMetrics, EngineSettings, engine_settings
from .tasks import check_task_ref, owned_task_id

__all__ = [
    "RECENTLY_ENDED",
    "Engine",
    "EngineMetrics",
    "EngineSettings",
    "GrantEndListener",
    "GrantEndListeners",
    "GrantOutcome",
    "Introspection",
    "check_task_ref",
    "engine_settings",
    "owned_task_id",
    "reason_code",
]
