"""Pure, deterministic models of KVM and QEMU machinery (stdlib only)."""
