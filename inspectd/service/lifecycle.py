"""Signals for the daemon processes: SIGTERM/SIGINT stop, SIGHUP asks for a model reload.

The handlers only set events; the loops look at them between frames, so a signal never cuts a
frame in half and a reload never drops one.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading

from inspectd.errors import InspectdError

log = logging.getLogger(__name__)


@contextlib.contextmanager
def signal_handlers(stop: threading.Event, reload: threading.Event | None = None):
    """Install the handlers for the duration of a loop (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_stop(signum, _frame):
        log.info("%s: stopping", signal.Signals(signum).name)
        stop.set()

    def on_hup(_signum, _frame):
        if reload is None:
            log.info("SIGHUP: nothing to reload")
        else:
            log.info("SIGHUP: reloading the model after the current frame")
            reload.set()

    handlers = {signal.SIGTERM: on_stop, signal.SIGINT: on_stop, signal.SIGHUP: on_hup}
    previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def reload_model(current, reload, metrics, notifier):
    """The reloaded model (screening or refinement), or the current one when loading fails:
    the line keeps running on the old model and the failure is logged and counted."""
    if reload is None:
        return current
    notifier.reloading()
    try:
        new = reload()
    except Exception as exc:  # any bad bundle file: the line goes on with the model it has
        log.error("reload failed, keeping model %s: %s", current.model_id, " ".join(str(exc).split())[:500])
        metrics.reloads.labels("failed").inc()
        return current
    finally:
        notifier.ready()
    log.info("reloaded: model %s", new.model_id)
    metrics.reloads.labels("ok").inc()
    metrics.set_model(new.model_id)
    return new


class ThreadDied(InspectdError):
    """A thread the process needs has died: the process ends (non-zero exit, systemd restarts it)."""


def check_alive(thread: threading.Thread | None, metrics, role: str) -> None:
    """Raise ThreadDied when `thread` was started and is no longer alive; inspectd_up goes to 0 first."""
    if thread is None or thread.is_alive():
        return
    metrics.up.labels(role).set(0)
    error = getattr(thread, "error", None)
    raise ThreadDied(f"thread {thread.name} died ({type(error).__name__}: {error}); ending the process "
                     "so that it is restarted" if error else f"thread {thread.name} ended; ending the process")
