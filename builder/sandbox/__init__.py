"""Run a command inside a root filesystem directory, isolated, with no daemon.

Why util-linux ``unshare`` plus a small Python child, rather than bubblewrap or a runc bundle:
``unshare`` is in every Debian/Ubuntu/Fedora base system (util-linux is essential), it creates
the namespaces (mount, PID, UTS, IPC, and network for ``network: none``; a user namespace with
uid 0 inside when pybuild is not root) and, with ``--fork``, makes our child PID 1 of the new PID
namespace, so every process the script leaves behind dies with it. The child (``builder/sandbox/child.py``, run as
``python -m builder.sandbox.child``) then does what needs code rather than flags: mounts ``/proc``, a
minimal ``/dev`` (null, zero, full, random, urandom, tty bound from the host; a private devpts;
``/dev/shm``), the host's ``resolv.conf``/``hosts`` read-only for ``network: host``, secrets and
caches; brings loopback up in a fresh network namespace; ``pivot_root``s into the rootfs; drops to
the step's user; and ``exec``s the shell. bubblewrap is not installed by default and runc needs a
bundle and cgroups; both would be a second moving part for the same kernel calls.

Mount points are prepared by the parent (``builder/fs/mountpoints.py``) with every path resolved inside the
root filesystem (an image's ``/proc -> /etc`` symlink cannot make us mount over a host path), and
the ones it had to create are removed afterwards, so the root filesystem is left as the command
left it. All mounts live in the child's private mount namespace and vanish when it exits.

The package holds the host side (:mod:`builder.sandbox.host`), the spec both sides read
(:mod:`builder.sandbox.spec`) and the child (:mod:`builder.sandbox.child`); it imports none of them
itself, so the child, a new interpreter for every run step, starts with only what it needs.
"""
