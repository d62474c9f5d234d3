"""The sandbox's host side: start the child in new namespaces and stream its output (see
:mod:`builder.sandbox`)."""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable

from builder import confine
from builder.errors import StepError
from builder.oci.config import DEFAULT_PATH
from builder.sandbox.spec import Bind, Copy, RunSpec, spec_to_json
from builder.userns import IdMap

__all__ = ["Bind", "Copy", "RunSpec", "join_user_namespace", "run", "run_in_own_user_namespace",
           "run_in_user_namespace"]



def _unshare() -> str:
    unshare = shutil.which("unshare") or next(
        (p for p in ("/usr/bin/unshare", "/bin/unshare") if os.path.exists(p)), None)
    if unshare is None:
        raise StepError("run steps need util-linux 'unshare', which is not installed")
    return unshare


def _unshare_argv(network: str, rootless: bool) -> list[str]:
    argv = [_unshare(), "--mount", "--uts", "--ipc", "--pid", "--fork", "--kill-child"]
    if network == "none":
        argv.append("--net")
    if rootless:
        argv += ["--user", "--map-root-user"]
    return argv


# ----------------------------------------------------------------------------------------------
# rootless builds with a full id range: the whole build re-executed inside a user namespace

_USERNS_ENV = "PYBUILD_USERNS_FDS"  # "READY,GO": the pipes between a re-executed build and its parent


def run_in_user_namespace(idmap: IdMap, argv: list[str]) -> tuple[int | None, str]:
    """Run ``python -m builder ARGV`` in a new user namespace mapped by ``idmap``; (its exit status, "").

    The child is started by ``unshare --user`` and waits (:func:`join_user_namespace`) until the
    parent has written its maps with the setuid helpers ``newuidmap``/``newgidmap`` (an
    unprivileged process may map only its own id; the helpers check ``/etc/subuid`` and
    ``/etc/subgid``), as Podman and Buildah do. If a helper refuses, the child is told to stop
    and this returns (None, what the helper said): the caller builds with the single mapping.
    An interrupt reaches the child through the terminal's process group; the parent only waits
    for it and passes its status on (130 after Ctrl-C).
    """
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    env = dict(os.environ, **{_USERNS_ENV: f"{ready_w},{go_r}"})
    try:
        proc = subprocess.Popen([_unshare(), "--user", sys.executable, "-m", "builder", *argv], env=env,
                                pass_fds=(ready_w, go_r))
    except OSError as exc:
        for fd in (ready_r, ready_w, go_r, go_w):
            os.close(fd)
        return None, f"cannot start unshare: {exc.strerror}"
    os.close(ready_w)
    os.close(go_r)
    problem = ""
    try:
        with open(ready_r, "rb") as ready:
            if ready.read(1) != b"r":
                problem = "the re-executed build did not start"
        for tool, args in (("newuidmap", idmap.uid_args()), ("newgidmap", idmap.gid_args())):
            if problem:
                break
            done = subprocess.run([tool, str(proc.pid), *args], capture_output=True, text=True, check=False)
            if done.returncode != 0:
                said = (done.stderr or done.stdout).strip().splitlines()
                problem = f"{tool} failed" + (f": {said[-1]}" if said else f" (exit status {done.returncode})")
        with contextlib.suppress(BrokenPipeError):
            os.write(go_w, b"0" if problem else b"1")
    finally:
        os.close(go_w)
        status = _wait_passing_interrupts(proc)
    return (None, problem) if problem else (status, "")


def run_in_own_user_namespace(argv: list[str]) -> int | None:
    """Run ``python -m builder ARGV`` as uid 0 of a new user namespace that maps only the user's own
    id (``unshare --user --map-root-user``: no helper, no /etc/subuid); its exit status, or None
    when this machine does not allow unprivileged user namespaces.

    What the build can do with ids is what the per-command namespaces of a build without a range
    allow (one id); what it gains is a mount namespace of its own, so run steps can mount
    overlayfs (Linux 5.11+) instead of copying the base for every step.
    """
    probe = subprocess.run([_unshare(), "--user", "--map-root-user", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        return None
    try:
        proc = subprocess.Popen([_unshare(), "--user", "--map-root-user", sys.executable, "-m", "builder", *argv])
    except OSError:
        return None
    return _wait_passing_interrupts(proc)


def _wait_passing_interrupts(proc: subprocess.Popen[bytes]) -> int:
    while True:
        try:
            status = proc.wait()
            break
        except KeyboardInterrupt:
            continue  # the child got the same SIGINT and exits on its own, with 130
    return 128 - status if status < 0 else status


def join_user_namespace() -> None:
    """In a build re-executed by :func:`run_in_user_namespace`: wait for the maps, then start again as uid 0.

    Called first thing by the CLI; does nothing in any other process. The process was executed
    before its maps existed, as an unmapped user, so it holds no capabilities in its namespace;
    executing itself once more, now as uid 0 there, gives it root's (the kernel's rule for exec).
    """
    fds = os.environ.pop(_USERNS_ENV, None)
    if fds is None:
        return
    ready, go = (int(fd) for fd in fds.split(","))
    os.write(ready, b"r")
    os.close(ready)
    answer = os.read(go, 1)
    os.close(go)
    if answer != b"1":
        os._exit(125)  # the parent builds without the range and says why
    with contextlib.suppress(OSError):
        os.setgroups([])  # the host's supplementary groups are unmapped (nogroup) in here
    os.execv(sys.executable, sys.orig_argv)


def _check_strings(spec: RunSpec) -> None:
    """What execve(2) cannot take is a clean error here, not a traceback from the child."""
    for text in [*spec.argv, *spec.env.values()]:
        if "\0" in text:
            raise StepError(f"a NUL character cannot be passed to a command: {text[:40]!r}")
    for name in spec.env:
        if not name or "\0" in name or "=" in name:
            raise StepError(f"not a valid environment variable name: {name[:40]!r}")


_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
"""The directory ``builder`` is in: what the child imports it from."""


def run(spec: RunSpec, on_output: Callable[[str], None], tail: int = 20,
        fds: tuple[int, ...] = ()) -> tuple[int, list[str]]:
    """Run ``spec`` isolated and confined; stream its merged output line by line to ``on_output``.

    ``fds`` are kept open for the child (the ``/proc/self/fd/N`` sources of its binds). Returns
    (exit status, the last ``tail`` lines). A status above 128 is a signal (128 + N).
    """
    _check_strings(spec)
    missing = confine.available()
    if missing is not None:
        raise StepError(missing)
    rootless = os.geteuid() != 0
    # -S: no site (its .pth files, an editable install's finder among them, are a third of the
    # child's start); the package's own directory is on the path instead
    argv = [*_unshare_argv(spec.network, rootless), sys.executable, "-S", "-m", "builder.sandbox.child"]
    payload = spec_to_json(spec)
    env = {"PATH": os.environ.get("PATH", DEFAULT_PATH), "PYTHONPATH": os.pathsep.join([_PACKAGE_PARENT, *sys.path])}
    last: collections.deque[str] = collections.deque(maxlen=tail)
    try:
        proc = subprocess.Popen([*argv, payload], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, env=env, start_new_session=False, pass_fds=fds)
    except OSError as exc:
        raise StepError(f"cannot start the sandbox: {exc.strerror}") from exc
    assert proc.stdout is not None
    try:
        with proc.stdout:
            for raw in proc.stdout:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                last.append(line)
                on_output(line)
    except BaseException:
        # an interrupt (or a failing reporter): unshare --kill-child takes the whole sandbox with it
        proc.kill()
        proc.wait()
        raise
    status = proc.wait()
    if status < 0:
        status = 128 - status
    return status, list(last)
