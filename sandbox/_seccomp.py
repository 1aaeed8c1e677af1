"""The seccomp filter bubblewrap installs before it runs buyer code.

A deny list, not an allow list: numpy, polars (Rust, jemalloc, rayon) and pyarrow use a
wide and version-dependent set of system calls, and an allow list that is one call short
turns into crashes nobody can debug from a result status. The namespaces already remove
the network, the host's processes and the host's files; the filter removes the kernel
interfaces that have a record of privilege-escalation bugs or that reach outside those
namespaces (ptrace, mount, new namespaces, keyrings, BPF, perf, modules, io_uring ...).
Denied calls fail with EPERM, so well-behaved libraries that probe (e.g. for io_uring or
clone3) fall back instead of dying.

Only the native architecture is allowed: libseccomp's default bad-architecture action
kills a process that switches to the 32-bit (int 0x80) or x32 system call ABI, which
would otherwise bypass a filter written for x86-64 numbers.

The BPF program is built once per process and cached; backends pass a fresh memfd copy
to every bubblewrap invocation.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import tempfile

from yumen.errors import Code, YumenError

__all__ = ["DENIED_SYSCALLS", "seccomp_bpf", "seccomp_memfd"]

log = logging.getLogger(__name__)

DENIED_SYSCALLS = (
    # debugging and reading other processes' memory
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    # file systems and namespaces
    "mount", "umount2", "pivot_root", "chroot", "unshare", "setns",
    "fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree", "mount_setattr",
    "name_to_handle_at", "open_by_handle_at",
    # kernel keyrings
    "keyctl", "add_key", "request_key",
    # BPF, perf, tracing
    "bpf", "perf_event_open", "fanotify_init", "lookup_dcookie",
    # modules, kexec, reboot, swap, clock and system state
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load",
    "reboot", "swapon", "swapoff", "acct", "quotactl", "quotactl_fd",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "sethostname", "setdomainname",
    "syslog", "vhangup", "iopl", "ioperm", "create_module", "get_kernel_syms", "query_module",
    "nfsservctl", "uselib", "_sysctl", "sysfs", "ustat",
    # memory tricks used by kernel exploits
    "userfaultfd", "personality", "modify_ldt", "mbind", "migrate_pages", "move_pages", "set_mempolicy",
    # io_uring bypasses the per-call filter entirely
    "io_uring_setup", "io_uring_enter", "io_uring_register",
)

# clone() flags that create namespaces; clone with any of them is refused. clone3 passes
# its flags in memory a filter cannot read, so it is refused outright (ENOSYS makes glibc
# fall back to clone, which the flag check covers).
# CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET, NEWTIME
_CLONE_NS_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000, 0x00000080)
_TIOCSTI = 0x5412


@functools.cache
def seccomp_bpf() -> bytes:
    """Compile the filter to classic BPF (what ``bwrap --seccomp FD`` reads)."""
    try:
        import pyseccomp as seccomp
    except (ImportError, RuntimeError) as e:
        raise YumenError(
            Code.SANDBOX_UNAVAILABLE,
            f"libseccomp is not usable: {e}",
            hint="install libseccomp2 (apt-get install -y libseccomp2) and the pyseccomp package",
        ) from None
    flt = seccomp.SyscallFilter(seccomp.ALLOW)
    eperm = seccomp.ERRNO(errno.EPERM)
    for name in DENIED_SYSCALLS:
        try:
            flt.add_rule(eperm, name)
        except (OSError, ValueError, RuntimeError):
            # Not a system call on this architecture (e.g. create_module on new kernels).
            log.debug("seccomp: %s is unknown here", name)
    flt.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    for flag in _CLONE_NS_FLAGS:
        flt.add_rule(eperm, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
    # Typing into the controlling terminal's input queue (bwrap --new-session also stops it).
    flt.add_rule(eperm, "ioctl", seccomp.Arg(1, seccomp.MASKED_EQ, 0xFFFFFFFF, _TIOCSTI))
    with tempfile.TemporaryFile() as f:
        flt.export_bpf(f)
        f.seek(0)
        return f.read()


def seccomp_memfd() -> int:
    """A fresh readable fd holding the BPF program, for one bubblewrap invocation."""
    fd = os.memfd_create("yumen-seccomp", 0)
    os.write(fd, seccomp_bpf())
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
