"""Drive real container tooling from tests: runc (via umoci), a private containerd, podman, buildah.

Each helper keeps all of its state in a directory of its own (never the machine's
/var/lib/containerd, /var/lib/containers or /run/runc state), so the tests neither see nor
disturb images or containers that exist on the machine. Everything runs as root.

What this machine (and the Debian 12 CI runner) needed, found by trying:

- containerd: the ``native`` snapshotter is the default here because it works everywhere
  (overlayfs also works on this VM but not inside every container); override with
  ``PYBUILD_TEST_SNAPSHOTTER``. The CRI plugin and the btrfs/zfs/aufs/devmapper snapshotters
  are disabled.
- runc: ``umoci unpack`` writes ``process.terminal: true``; that needs a console socket, so
  it is set to false. umoci 0.4.7 cannot unpack ``+zstd`` layers; such images are first
  recompressed to gzip with ``skopeo copy`` (which reads zstd) and then unpacked.
- podman: ``--storage-driver vfs --cgroup-manager cgroupfs --events-backend file`` (no
  systemd or journald needed), ``--network none`` and ``--pull never`` for ``run``, and
  explicit ``--ulimit nofile=1024:1024 --ulimit nproc=1024:1024``: its defaults (1048576)
  exceed the hard limits here and CAP_SYS_RESOURCE is not available, so runc fails with
  "error setting rlimit type 7: operation not permitted".
- buildah: ``--storage-driver vfs`` and private ``--root``/``--runroot``; its defaults run.
- All of them read ``$DOCKER_CONFIG``; podman fails if that directory has no config.json
  (tests/conftest.py's clean_env writes an empty one).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

RUN_TIMEOUT = 120
DEFAULT_SNAPSHOTTER = os.environ.get("PYBUILD_TEST_SNAPSHOTTER", "native")


class ToolError(AssertionError):
    """A tool failed; the message carries the command and its output."""


def run(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    check: bool = True,
    timeout: float = RUN_TIMEOUT,
    cwd: str | os.PathLike[str] | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command without a terminal; with ``check``, raise ToolError showing its output."""
    args = [str(c) for c in cmd]
    proc = subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL, cwd=cwd, env=env
    )
    if check and proc.returncode != 0:
        raise ToolError(describe(proc))
    return proc


def describe(proc: subprocess.CompletedProcess[str]) -> str:
    """A failure message for an assertion on a finished process: command, exit status, output."""
    cmd = proc.args if isinstance(proc.args, str) else " ".join(map(str, proc.args))
    return f"$ {cmd}\nexit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


def unique_id(prefix: str = "pybuild") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path`` (deepest first), from /proc/self/mountinfo."""
    root = os.path.realpath(path)
    found = []
    with contextlib.suppress(OSError), open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point == root or point.startswith(root + "/"):
                found.append(point)
    return sorted(found, key=len, reverse=True)


def remove_tree(path: Path) -> None:
    """Unmount whatever a runtime left mounted below ``path``, then delete it."""
    for point in mounts_under(path):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)
    if mounts_under(path):  # never recurse into something still mounted
        return
    shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# umoci + runc


def umoci_image(workdir: Path, rootfs_tar_gz: Path, tag: str, cmd: list[str]) -> Path:
    """An OCI layout made without pybuild: umoci init/new, the rootfs as one layer, a cmd; gc'd."""
    layout = workdir / "umoci-layout"
    layer = workdir / "layer.tar"
    with gzip.open(rootfs_tar_gz, "rb") as src, open(layer, "wb") as dst:
        shutil.copyfileobj(src, dst)
    run(["umoci", "init", "--layout", layout])
    run(["umoci", "new", "--image", f"{layout}:{tag}"])
    run(["umoci", "raw", "add-layer", "--image", f"{layout}:{tag}", layer])
    run(["umoci", "config", "--image", f"{layout}:{tag}", *(f"--config.cmd={c}" for c in cmd)])
    run(["umoci", "gc", "--layout", layout])
    layer.unlink()
    return layout


class Runc:
    """Unpack an OCI layout tag with umoci and run the bundle with runc (private ``--root``)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.state = workdir / "runc-state"
        self.state.mkdir(parents=True, exist_ok=True)

    def unpack(self, layout: str | os.PathLike[str], tag: str, bundle: Path | None = None) -> Path:
        """``umoci unpack --image LAYOUT:TAG BUNDLE``; returns the bundle (rootfs/ + config.json).

        Layouts with zstd layers (which umoci 0.4.7 refuses) go through ``skopeo copy`` to a
        gzip layout first.
        """
        bundle = bundle if bundle is not None else self.workdir / unique_id("bundle")
        proc = run(["umoci", "unpack", "--image", f"{layout}:{tag}", bundle], check=False)
        if proc.returncode != 0 and "tar+zstd" in proc.stderr:
            shutil.rmtree(bundle, ignore_errors=True)
            gz = self.workdir / unique_id("gzip-layout")
            run(
                ["skopeo", "copy", "--dest-compress", "--dest-compress-format", "gzip",
                 f"oci:{layout}:{tag}", f"oci:{gz}:{tag}"],
            )  # fmt: skip
            proc = run(["umoci", "unpack", "--image", f"{gz}:{tag}", bundle], check=False)
        if proc.returncode != 0:
            raise ToolError(f"umoci unpack {layout}:{tag} failed:\n{proc.stdout}\n{proc.stderr}")
        return bundle

    def run_bundle(
        self, bundle: Path, args: Sequence[str] | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run the bundle's process (or ``args`` instead) to completion; stdout/stderr captured."""
        config_path = bundle / "config.json"
        config = json.loads(config_path.read_text())
        config["process"]["terminal"] = False
        if args is not None:
            config["process"]["args"] = list(args)
        config_path.write_text(json.dumps(config))
        cid = unique_id()
        try:
            return run(["runc", "--root", self.state, "run", "--bundle", bundle, cid], check=check)
        finally:
            run(["runc", "--root", self.state, "delete", "--force", cid], check=False)

    def run(
        self, layout: str | os.PathLike[str], tag: str, args: Sequence[str] | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Unpack ``LAYOUT:TAG`` and run it; returns the finished process (stdout = the output)."""
        bundle = self.unpack(layout, tag)
        try:
            return self.run_bundle(bundle, args, check=check)
        finally:
            remove_tree(bundle)

    def close(self) -> None:
        for line in run(["runc", "--root", self.state, "list", "-q"], check=False).stdout.split():
            run(["runc", "--root", self.state, "delete", "--force", line], check=False)


# --------------------------------------------------------------------------------------------
# containerd


CONTAINERD_CONFIG = """\
version = 2
root = "{root}"
state = "{state}"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "{socket}"

[debug]
  level = "info"

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
"""


class Containerd:
    """A private containerd daemon; ``ctr`` talks to it in namespace ``pybuild-test``."""

    NAMESPACE = "pybuild-test"

    def __init__(self, workdir: Path, snapshotter: str = DEFAULT_SNAPSHOTTER) -> None:
        self.workdir = workdir
        self.snapshotter = snapshotter
        # A unix socket path must stay under ~107 bytes: use a short directory if needed.
        sockdir = workdir
        if len(str(workdir / "containerd.sock.ttrpc")) > 100:
            sockdir = Path(tempfile.mkdtemp(prefix="pbctd-", dir="/tmp"))
        self.sockdir = sockdir
        self.socket = sockdir / "containerd.sock"
        self.config = workdir / "config.toml"
        self.log = workdir / "containerd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> Containerd:
        self.config.write_text(
            CONTAINERD_CONFIG.format(
                root=self.workdir / "root", state=self.workdir / "state", socket=self.socket, opt=self.workdir / "opt"
            )
        )
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                ["containerd", "--config", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise ToolError(f"containerd exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self.socket.exists() and self.ctr("version", check=False, timeout=10).returncode == 0:
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise ToolError(f"containerd did not come up in {timeout}s:\n{self.log_tail()}")
            time.sleep(0.1)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def ctr(
        self, *args: str | os.PathLike[str], check: bool = True, timeout: float = RUN_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        """``ctr --address SOCK -n pybuild-test ARGS``."""
        return run(["ctr", "--address", self.socket, "-n", self.NAMESPACE, *args], check=check, timeout=timeout)

    def images(self) -> list[str]:
        return self.ctr("images", "ls", "-q").stdout.split()

    def import_archive(self, archive: str | os.PathLike[str], *flags: str) -> list[str]:
        """``ctr images import`` (unpacked for our snapshotter); returns the refs it created or updated."""
        before = set(self.images())
        proc = self.ctr("images", "import", "--snapshotter", self.snapshotter, *flags, archive)
        named = re.findall(r"^unpacking (\S+) \(sha256:[0-9a-f]{64}\)", proc.stdout, re.MULTILINE)
        new = [ref for ref in self.images() if ref not in before]
        return list(dict.fromkeys([*named, *new]))

    def run(self, ref: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``ctr run --rm --snapshotter S REF ID [CMD...]``; returns the finished process."""
        return self.ctr("run", "--rm", "--snapshotter", self.snapshotter, ref, unique_id(), *cmd, check=check)

    def remove_images(self, *refs: str) -> None:
        if refs:
            self.ctr("images", "rm", "--sync", *refs, check=False)

    def stop(self) -> None:
        """Kill leftover tasks, stop the daemon, unmount and delete its state."""
        if self.proc is not None and self.proc.poll() is None:
            for cid in self.ctr("containers", "ls", "-q", check=False, timeout=30).stdout.split():
                self.ctr("tasks", "kill", "--signal", "SIGKILL", cid, check=False, timeout=30)
                self.ctr("tasks", "delete", "--force", cid, check=False, timeout=30)
                self.ctr("containers", "delete", cid, check=False, timeout=30)
            self.remove_images(*self.ctr("images", "ls", "-q", check=False, timeout=30).stdout.split())
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        remove_tree(self.workdir)
        if self.sockdir != self.workdir:
            remove_tree(self.sockdir)


# --------------------------------------------------------------------------------------------
# podman


class Podman:
    """podman with private storage (vfs) and the flags this machine needs (module docstring)."""

    RUN_FLAGS = (
        "--rm", "--pull", "never", "--network", "none",
        "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
    )  # fmt: skip

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.global_flags = [
            "--root", str(workdir / "storage"),
            "--runroot", str(workdir / "run"),
            "--tmpdir", str(workdir / "tmp"),
            "--storage-driver", "vfs",
            "--cgroup-manager", "cgroupfs",
            "--events-backend", "file",
        ]  # fmt: skip

    def podman(
        self, *args: str | os.PathLike[str], check: bool = True, timeout: float = RUN_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        return run(["podman", *self.global_flags, *args], check=check, timeout=timeout)

    def load(self, archive: str | os.PathLike[str]) -> list[str]:
        """``podman load -i ARCHIVE``; returns the loaded image names (``Loaded image(s): …``)."""
        proc = self.podman("load", "-i", archive)
        names: list[str] = []
        for m in re.finditer(r"^Loaded image\(?s?\)?: (.+)$", proc.stdout, re.MULTILINE):
            names += [n.strip() for n in m.group(1).split(",") if n.strip()]
        return names

    def run(self, image: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.podman("run", *self.RUN_FLAGS, image, *cmd, check=check)

    def close(self) -> None:
        self.podman("rm", "--all", "--force", check=False)
        self.podman("rmi", "--all", "--force", check=False)
        remove_tree(self.workdir)


# --------------------------------------------------------------------------------------------
# buildah


class Buildah:
    """buildah with private vfs storage: build on top of a layout, as `buildah from oci:OUT:TAG`."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.global_flags = [
            "--root", str(workdir / "storage"),
            "--runroot", str(workdir / "run"),
            "--storage-driver", "vfs",
        ]  # fmt: skip

    def buildah(
        self, *args: str | os.PathLike[str], check: bool = True, timeout: float = RUN_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        return run(["buildah", *self.global_flags, *args], check=check, timeout=timeout)

    def from_image(self, image: str) -> str:
        """``buildah from --pull-never IMAGE`` → the working container's name."""
        return self.buildah("from", "--quiet", "--pull-never", image).stdout.strip().splitlines()[-1]

    def run(self, container: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.buildah("run", "--network", "none", container, "--", *cmd, check=check)

    def close(self) -> None:
        self.buildah("rm", "--all", check=False)
        self.buildah("rmi", "--all", "--force", check=False)
        remove_tree(self.workdir)
