"""The seccomp program compiles, is cached, and covers the calls the threat model names."""

from __future__ import annotations

import os

from yumen.sandbox._seccomp import DENIED_SYSCALLS, seccomp_bpf, seccomp_memfd


def test_seccomp_bpf_is_a_nonempty_program_of_whole_instructions_built_once():
    bpf = seccomp_bpf()
    assert len(bpf) > 100 and len(bpf) % 8 == 0  # struct sock_filter is 8 bytes
    assert seccomp_bpf() is bpf


def test_denied_syscalls_cover_the_threat_model():
    required = {"ptrace", "mount", "umount2", "unshare", "setns", "keyctl", "add_key", "bpf",
                "perf_event_open", "kexec_load", "init_module", "finit_module", "delete_module",
                "pivot_root", "chroot", "swapon", "reboot", "process_vm_readv", "process_vm_writev",
                "userfaultfd", "personality", "io_uring_setup"}
    assert required <= set(DENIED_SYSCALLS)


def test_seccomp_memfd_holds_the_program_from_offset_zero():
    fd = seccomp_memfd()
    try:
        assert os.read(fd, 1 << 20) == seccomp_bpf()
    finally:
        os.close(fd)
