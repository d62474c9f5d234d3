"""What a ``run`` step's process may do: capabilities, no_new_privs, a seccomp filter, masked paths.

The namespaces of :mod:`builder.sandbox` decide what a command can *see*; this module decides what
it can *do* with what it sees. Without it a ``run`` step built as root holds every capability of
host root: a hostile base image's binary could ``open_by_handle_at`` the host's root inode, remount
a secret or ``/etc/hosts`` read-write, write ``/proc/sys`` or ``mknod`` a disk. The policy is the
one container users already trust, Docker's default (which runc's and Podman's defaults match):

- **capabilities**: the 14 of Docker's default set (:data:`DEFAULT_CAPS`): no ``CAP_SYS_ADMIN``,
  ``DAC_READ_SEARCH``, ``SYS_MODULE``, ``SYS_RAWIO``, ``SYS_PTRACE``, ``SYS_BOOT``, ``NET_ADMIN``...
  The bounding set is cut too, so no setuid binary or file capability can bring one back, and
  ``no_new_privs`` is set, as runc's default spec does.
- **seccomp**: every system call Docker's default profile refuses to a container without
  ``CAP_SYS_ADMIN`` fails with ``EPERM`` (:data:`DENIED`): the mount API old and new, namespace
  creation (``unshare``, ``setns``, ``clone`` with a namespace flag; ``clone3``, whose flags a
  filter cannot read, answers ``ENOSYS`` so libc falls back to ``clone``), file handles, kernel
  modules, kexec, bpf, perf, keyrings, io_uring, clock and swap changes, ``mknod`` of block devices.
  It is a deny list rather than Docker's allow list: the capability set is the first line (most of
  these calls need a dropped capability anyway), the filter the second, and a deny list cannot
  break a program that calls something new and harmless. The filter covers the machine's other
  ABIs too (i386 and x32 on x86-64, arm on arm64), so a 32-bit binary cannot walk around it.
- **paths**: ``/proc/kcore``, ``/proc/keys``, ``/proc/timer_list``... masked and ``/proc/sys``,
  ``/proc/sysrq-trigger``, ``/proc/irq``, ``/proc/bus``, ``/proc/fs`` read-only, as runc masks them.

The filter is compiled by **libseccomp** (``libseccomp.so.2``, which apt itself depends on, so it is
on every Debian and Ubuntu system), called through ``ctypes``: it knows every architecture's system
call numbers and emits a correct BPF program for each ABI, which is exactly what must not be
written by hand. Nothing here imports pybuild: the sandbox child calls it between ``pivot_root``
and ``execve``.
"""

from __future__ import annotations

import ctypes
import errno
import platform
from dataclasses import dataclass

#: Docker's default capability set (moby's ``DefaultCapabilities``), by number (linux/capability.h).
DEFAULT_CAPS = {
    "CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_FOWNER": 3, "CAP_FSETID": 4, "CAP_KILL": 5,
    "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_SETPCAP": 8, "CAP_NET_BIND_SERVICE": 10, "CAP_NET_RAW": 13,
    "CAP_SYS_CHROOT": 18, "CAP_MKNOD": 27, "CAP_AUDIT_WRITE": 29, "CAP_SETFCAP": 31,
}  # fmt: skip

#: System calls that fail with EPERM whatever their arguments.
DENIED = (
    # mounts, old API and new
    "mount", "umount", "umount2", "pivot_root", "fsopen", "fsconfig", "fsmount", "fspick", "move_mount",
    "open_tree", "mount_setattr",
    # namespaces
    "unshare", "setns",
    # file handles (the open_by_handle_at escape)
    "open_by_handle_at", "name_to_handle_at",
    # kernel, modules, boot
    "init_module", "finit_module", "delete_module", "create_module", "query_module", "get_kernel_syms",
    "kexec_load", "kexec_file_load", "reboot", "swapon", "swapoff", "acct", "uselib", "nfsservctl",
    "sysfs", "_sysctl", "ustat", "vm86", "vm86old", "lookup_dcookie", "quotactl", "quotactl_fd",
    # tracing and introspection
    "bpf", "perf_event_open", "kcmp", "pidfd_getfd", "fanotify_init", "userfaultfd", "syslog",
    # keyrings
    "add_key", "request_key", "keyctl",
    # clocks
    "settimeofday", "stime", "clock_settime", "clock_settime64", "clock_adjtime", "clock_adjtime64", "adjtimex",
    # memory policy (Docker: CAP_SYS_NICE only)
    "mbind", "set_mempolicy", "get_mempolicy", "move_pages", "migrate_pages", "set_mempolicy_home_node",
    # io_uring (moby refuses it by default since 2023: its operations bypass the syscall filter)
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    # raw I/O ports
    "ioperm", "iopl",
)  # fmt: skip

#: ``clone``/``unshare`` flags that make a namespace (linux/sched.h).
NAMESPACE_FLAGS = {
    "CLONE_NEWNS": 0x00020000, "CLONE_NEWCGROUP": 0x02000000, "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000, "CLONE_NEWUSER": 0x10000000, "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000, "CLONE_NEWTIME": 0x00000080,
}  # fmt: skip

S_IFMT, S_IFBLK = 0o170000, 0o060000

#: Masked as runc masks them: a file gets /dev/null bound over it, a directory an empty read-only tmpfs.
MASKED_PATHS = (
    "proc/acpi", "proc/asound", "proc/kcore", "proc/keys", "proc/latency_stats", "proc/timer_list",
    "proc/timer_stats", "proc/sched_debug", "proc/scsi", "sys/firmware", "sys/devices/virtual/powercap",
)  # fmt: skip
#: Bound read-only onto themselves.
READONLY_PATHS = ("proc/bus", "proc/fs", "proc/irq", "proc/sys", "proc/sysrq-trigger")

#: Other ABIs a process on this machine can switch to (and so must be filtered alike).
_EXTRA_ARCHES = {"x86_64": ("x86", "x32"), "aarch64": ("arm",)}

# prctl(2) options and the capset(2) ABI
_PR_CAPBSET_DROP, _PR_SET_NO_NEW_PRIVS, _PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 24, 38, 47, 4
_CAP_VERSION_3 = 0x20080522

# libseccomp's ABI (seccomp.h)
_SCMP_ACT_ALLOW = 0x7FFF0000
_SCMP_CMP_MASKED_EQ = 7


def _act_errno(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


class ConfineError(OSError):
    """The confinement could not be set up: the command must not run."""


class _ArgCmp(ctypes.Structure):
    _fields_ = (("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64))  # fmt: skip


_libc = ctypes.CDLL(None, use_errno=True)


def _libseccomp() -> ctypes.CDLL:
    try:  # its soname first: find_library runs ldconfig, a process, in every run step's start
        lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    except OSError:
        from ctypes.util import find_library

        try:
            lib = ctypes.CDLL(find_library("seccomp") or "libseccomp.so", use_errno=True)
        except OSError as exc:
            raise ConfineError(errno.ENOENT, "run steps need libseccomp (Debian/Ubuntu: libseccomp2, "
                                             "Fedora: libseccomp), which is not installed") from exc
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = (ctypes.c_uint32,)
    lib.seccomp_release.argtypes = (ctypes.c_void_p,)
    lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
    lib.seccomp_arch_resolve_name.argtypes = (ctypes.c_char_p,)
    lib.seccomp_arch_add.argtypes = (ctypes.c_void_p, ctypes.c_uint32)
    lib.seccomp_syscall_resolve_name.argtypes = (ctypes.c_char_p,)
    lib.seccomp_rule_add_array.argtypes = (ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.POINTER(_ArgCmp))  # fmt: skip
    lib.seccomp_load.argtypes = (ctypes.c_void_p,)
    return lib


def available() -> str | None:
    """None when run steps can be confined here, else why not (one line)."""
    try:
        _libseccomp()
    except ConfineError as exc:
        return exc.strerror
    return None


@dataclass
class Filter:
    """A compiled-but-not-loaded seccomp filter: built before ``pivot_root`` (libseccomp lives on the
    host), loaded just before ``execve``."""

    _lib: ctypes.CDLL
    _ctx: int

    @classmethod
    def build(cls) -> Filter:
        lib = _libseccomp()
        ctx = lib.seccomp_init(_SCMP_ACT_ALLOW)
        if not ctx:
            raise ConfineError(errno.ENOMEM, "seccomp_init failed")
        self = cls(lib, ctx)
        for arch in _EXTRA_ARCHES.get(platform.machine(), ()):
            token = lib.seccomp_arch_resolve_name(arch.encode())
            rc = lib.seccomp_arch_add(ctx, token) if token else -errno.EINVAL
            if rc not in (0, -errno.EEXIST):
                raise ConfineError(-rc, f"seccomp: cannot add architecture {arch}")
        for name in DENIED:
            self._rule(_act_errno(errno.EPERM), name)
        clone_flags_arg = 1 if platform.machine().startswith("s390") else 0  # s390 swaps clone's first two
        for flag in NAMESPACE_FLAGS.values():
            self._rule(_act_errno(errno.EPERM), "clone", _ArgCmp(clone_flags_arg, _SCMP_CMP_MASKED_EQ, flag, flag))
        self._rule(_act_errno(errno.ENOSYS), "clone3")
        self._rule(_act_errno(errno.EPERM), "mknod", _ArgCmp(1, _SCMP_CMP_MASKED_EQ, S_IFMT, S_IFBLK))
        self._rule(_act_errno(errno.EPERM), "mknodat", _ArgCmp(2, _SCMP_CMP_MASKED_EQ, S_IFMT, S_IFBLK))
        return self

    def _rule(self, action: int, name: str, *cmps: _ArgCmp) -> None:
        number = self._lib.seccomp_syscall_resolve_name(name.encode())
        if number == -1:  # __NR_SCMP_ERROR: no such call on any architecture libseccomp knows
            return
        array = (_ArgCmp * len(cmps))(*cmps) if cmps else None
        rc = self._lib.seccomp_rule_add_array(self._ctx, action, number, len(cmps), array)
        # a call that one of the ABIs lacks (vm86 on x86-64, mknod on arm64 ...) is filtered where it exists
        if rc not in (0, -errno.EDOM, -errno.EOPNOTSUPP):
            raise ConfineError(-rc, f"seccomp: cannot add a rule for {name}")

    def load(self) -> None:
        rc = self._lib.seccomp_load(self._ctx)
        if rc != 0:
            raise ConfineError(-rc, "seccomp: cannot load the filter")


def last_cap() -> int:
    """The highest capability number this kernel knows (read before ``pivot_root``)."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 40  # CAP_CHECKPOINT_RESTORE, Linux 5.9


def _prctl(option: int, arg: int = 0) -> None:
    if _libc.prctl(option, ctypes.c_ulong(arg), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)) != 0:
        err = ctypes.get_errno()
        raise ConfineError(err, f"prctl({option}): {errno.errorcode.get(err, err)}")


def drop_capabilities(last: int, keep: frozenset[int] = frozenset(DEFAULT_CAPS.values())) -> None:
    """Cut the bounding set, clear ambient and inheritable, and keep ``keep`` as effective/permitted.

    Called as uid 0 (inside the sandbox's namespaces) before the switch to the step's user: a switch
    to another uid empties the effective and permitted sets anyway, and the bounding set then keeps
    a setuid-root binary from getting more than ``keep`` back.
    """
    for cap in range(last + 1):
        if cap not in keep:
            _prctl(_PR_CAPBSET_DROP, cap)
    _prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL)
    mask = sum(1 << cap for cap in keep if cap <= last)
    header = (ctypes.c_uint32 * 2)(_CAP_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)(mask & 0xFFFFFFFF, mask & 0xFFFFFFFF, 0, mask >> 32, mask >> 32, 0)
    if _libc.capset(header, data) != 0:
        err = ctypes.get_errno()
        raise ConfineError(err, f"capset: {errno.errorcode.get(err, err)}")


def no_new_privs() -> None:
    """No setuid bit or file capability can raise privileges from here on (and seccomp may load)."""
    _prctl(_PR_SET_NO_NEW_PRIVS, 1)
