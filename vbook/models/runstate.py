"""What a device or a vCPU thread asks of QEMU's main loop: shutdown, reset, stop.

A vCPU thread never ends the VM itself. A device callback or an exit handler
*requests* it (QEMU 9.2.4 system/runstate.c): ``qemu_system_shutdown_request``
records a :class:`ShutdownCause` in ``shutdown_requested`` and wakes the main
loop; ``qemu_system_reset_request`` records ``reset_requested`` (or, with
``-no-reboot``, a shutdown) and stops the calling vCPU
(``cpu_stop_current``); ``vm_stop`` from a vCPU thread queues a stop request.
The main loop (``main_loop_should_exit``) acts on them between its polls.
:class:`Runstate` holds these requests for one modelled machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class ShutdownCause(IntEnum):
    """``ShutdownCause`` — qapi/run-state.json (QEMU 9.2.4); QAPI numbers enums in order."""

    NONE = 0
    HOST_ERROR = 1
    HOST_QMP_QUIT = 2
    HOST_QMP_SYSTEM_RESET = 3
    HOST_SIGNAL = 4
    HOST_UI = 5
    GUEST_SHUTDOWN = 6
    GUEST_RESET = 7
    GUEST_PANIC = 8
    SUBSYSTEM_RESET = 9
    SNAPSHOT_LOAD = 10

    @property
    def qapi(self) -> str:
        """The QAPI name, e.g. ``guest-reset``."""
        return self.name.lower().replace("_", "-")


class RunState(IntEnum):
    """``RunState`` — qapi/run-state.json (QEMU 9.2.4), the states this book's runs reach."""

    INTERNAL_ERROR = 2
    RUNNING = 9
    SHUTDOWN = 11


#: <stdlib.h> EXIT_SUCCESS: system/runstate.c starts ``shutdown_exit_code`` at it
EXIT_SUCCESS = 0


@dataclass
class Runstate:
    """The requests of system/runstate.c for one machine (QEMU keeps them in globals).

    ``no_reboot``: the ``-no-reboot`` option (``reboot_action=shutdown``), which
    turns a guest's reset request into a shutdown.
    """

    shutdown_requested: ShutdownCause = ShutdownCause.NONE
    reset_requested: ShutdownCause = ShutdownCause.NONE
    vmstop_requested: RunState | None = None
    shutdown_exit_code: int = EXIT_SUCCESS
    no_reboot: bool = False

    def qemu_system_shutdown_request(self, reason: ShutdownCause) -> None:
        """Ask the main loop to shut the VM down (``shutdown_requested = reason``)."""
        self.shutdown_requested = reason

    def qemu_system_shutdown_request_with_code(self, reason: ShutdownCause,
                                               exit_code: int) -> None:
        """A shutdown after which QEMU exits with ``exit_code`` (hw/misc/debugexit.c uses it)."""
        self.shutdown_exit_code = exit_code
        self.qemu_system_shutdown_request(reason)

    def qemu_system_reset_request(self, reason: ShutdownCause) -> None:
        """Ask for a reset — a shutdown under ``-no-reboot`` (``reboot_action``)."""
        if self.no_reboot and reason != ShutdownCause.SUBSYSTEM_RESET:
            self.shutdown_requested = reason
        else:
            self.reset_requested = reason

    def qemu_system_vmstop_request(self, state: RunState) -> None:
        """``vm_stop`` from a vCPU thread: the main loop stops the VM in ``state``."""
        self.vmstop_requested = state

    @property
    def pending(self) -> bool:
        """Is there a request the main loop has to act on?"""
        return bool(self.shutdown_requested or self.reset_requested
                    or self.vmstop_requested is not None)


__all__ = ["EXIT_SUCCESS", "RunState", "Runstate", "ShutdownCause"]
