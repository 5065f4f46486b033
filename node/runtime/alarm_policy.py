"""When a due alarm runs, and what happens when it fails: the alarm policy of an activation.

``run_alarm`` calls the object's ``alarm(info)`` if its stored alarm is due; if the handler
raises, the alarm is written again ``ALARM_BACKOFF_S * 2**retry`` seconds later, up to
``ALARM_MAX_RETRIES`` retries (then it is dropped, logged), as Cloudflare retries alarms with
exponential back-off. A mixin of ``Activation`` (node/runtime/activation.py); the schedule of
alarms across objects is ``node/runtime/alarms.py``'s.
"""

from __future__ import annotations

import inspect
import logging
from typing import TYPE_CHECKING, Any

from duro.node.runtime.context import AlarmInfo
from duro.node.storage.object_storage import now_ms

if TYPE_CHECKING:
    from duro.node.storage.object_storage import ObjectStorage

__all__ = ["AlarmPolicy", "ALARM_MAX_RETRIES", "ALARM_BACKOFF_S"]

log = logging.getLogger("duro.node.runtime")

ALARM_MAX_RETRIES = 6
ALARM_BACKOFF_S = 2.0


class AlarmPolicy:
    """``run_alarm``; a mixin of ``Activation``."""

    __slots__ = ()

    if TYPE_CHECKING:  # provided by Activation
        storage: ObjectStorage
        instance: Any

        def _log_ctx(self) -> dict[str, str]: ...

    async def run_alarm(self, force: bool = False) -> bool:
        """Run ``alarm(info)`` if the stored alarm is due (or ``force``). Returns whether it ran."""
        st = self.storage
        if st._alarm_firing is not None:
            return False  # already running (a duplicate wake-up)
        rec = st._alarm_record()
        now = now_ms()
        if rec is None or (rec[0] > now + 5 and not force):
            return False  # deleted or moved later since it was scheduled
        when, _binding, retry = rec
        version = st._alarm_version
        handler = getattr(self.instance, "alarm", None)
        st._alarm_firing = when
        try:
            if handler is not None:
                res = handler(AlarmInfo(retry_count=retry, is_retry=retry > 0))
                if inspect.isawaitable(res):
                    await res
        except Exception as exc:
            if st._error is None and st._alarm_version == version:
                if retry < ALARM_MAX_RETRIES:
                    delay = ALARM_BACKOFF_S * (2**retry)
                    st._write_alarm_internal(now_ms() + int(delay * 1000), retry + 1)
                    log.warning("alarm raised %r; retry %s in %.0f s", exc, retry + 1, delay,
                                extra=self._log_ctx())
                else:
                    st._write_alarm_internal(None)
                    log.error("alarm raised %r; gave up after %s retries", exc, retry,
                              extra=self._log_ctx())
            raise
        else:
            if st._error is None and st._alarm_version == version:
                st._write_alarm_internal(None)
        finally:
            st._alarm_firing = None
        return True
