"""Device models as QEMU writes them: state, MemoryRegionOps callbacks, and where they sit.

* :mod:`~vbook.devices.serial16550` — the 16550A UART (hw/char/serial.c)
* :mod:`~vbook.devices.debug_exit` — ``isa-debug-exit`` (hw/misc/debugexit.c)
* :mod:`~vbook.devices.pc_testdev` — ``pc-testdev`` ports and MMIO window (hw/misc/pc-testdev.c)
* :mod:`~vbook.devices.machine` — the board that places them in QEMU's two
  address spaces (:mod:`vbook.models.qemu_memory`), used by :mod:`vbook.models.run_loop`
"""
