"""The systemd lab: each node of a netns lab is a Debian 12 container booting systemd as PID 1.

    with SystemdLab(3) as lab:
        lab.boot_all()
        lab.install_deb("node1", Path("build/hafailover_0.1.0_amd64.deb"))
        lab.exec("node1", ["systemctl", "is-system-running"])

The root file system is made once by ``mmdebstrap --variant=minbase`` and cached under
/var/cache/hafailover-lab (HAFAILOVER_LAB_CACHE), keyed by the suite and the package list.
Every container boots an overlay of it (``systemd-nspawn -b --register=no --keep-unit``), so
the cache is never written and a container's changes vanish with it. The containers join the
netns lab's namespaces (``--network-namespace-path``): the same bridge, addresses and fault
injection as lab.netns, no default route, nothing joined to the host's network. Host-side tools
(lab.monitor, lab.echo, lab.probe) run in those namespaces as usual and see the containers'
addresses.

Cleanup: close() powers each container off through its own systemd-nspawn process (SIGTERM,
then SIGKILL by PID), then Lab.close() kills whatever is left in the node namespaces (the
containers' processes) and deletes them, then the overlays are unmounted. cleanup_stale()
does the same for runs that died (their PID is in the names).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from lab import netns
from lab.netns import Lab, LabError

SUITE = "bookworm"
# What a node needs besides the package: systemd as PID 1 (systemd-sysv), dbus for systemctl's
# clients, python3 for the package's runtime, procps for ExecReload's kill, iproute2 to look.
ROOTFS_PACKAGES = ("systemd", "systemd-sysv", "iproute2", "python3", "dbus", "procps")
PREFIX = "hfsd"
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "TERM": "dumb",
       "DEBIAN_FRONTEND": "noninteractive", "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"}


def cache_dir() -> Path:
    return Path(os.environ.get("HAFAILOVER_LAB_CACHE", "/var/cache/hafailover-lab"))


def rootfs(packages: Sequence[str] = ROOTFS_PACKAGES, suite: str = SUITE,
           timeout: float = 900.0) -> Path:
    """The cached root file system for (suite, packages), made first if needed (~20-40 s).

    Safe against concurrent callers (a lock file) and interrupted builds (built under a
    temporary name, renamed when complete).
    """
    key = hashlib.sha256(f"{suite} minbase {' '.join(sorted(packages))}".encode()).hexdigest()
    base = cache_dir()
    path = base / f"rootfs-{suite}-{key[:16]}"
    if path.is_dir():
        return path
    base.mkdir(parents=True, exist_ok=True)
    with open(base / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.is_dir():
            return path
        tmp = base / f".build-{key[:16]}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            r = subprocess.run(
                ["mmdebstrap", "--quiet", "--variant=minbase", f"--include={','.join(packages)}",
                 suite, str(tmp)], capture_output=True, text=True, timeout=timeout)
            if r.returncode != 0:
                raise LabError(f"mmdebstrap failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
            tmp.rename(path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def _ns_pid(pid: int) -> int | None:
    """pid's number inside its innermost PID namespace (None if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return int(line.split()[-1])
    except (OSError, ValueError):
        return None
    return None


def _overlay_mounts() -> list[str]:
    with open("/proc/self/mounts") as f:
        return [ln.split()[1] for ln in f if ln.startswith("overlay ")]


def _umount(target: str) -> None:
    if subprocess.run(["umount", target], capture_output=True).returncode != 0:
        subprocess.run(["umount", "--lazy", target], capture_output=True)


def cleanup_stale() -> list[str]:
    """Remove what runs of this lab that died left behind: namespaces (and the containers'
    processes in them) by netns.cleanup_stale, then their overlay mounts. Returns the names."""
    removed = netns.cleanup_stale(PREFIX)
    pattern = re.compile(rf"/{PREFIX}(\d+)(?:_\d+)?-[^/]*/")
    for target in _overlay_mounts():
        m = pattern.search(target + "/")
        if m and not os.path.exists(f"/proc/{m.group(1)}"):
            _umount(target)
            removed.append(target)
    return removed


@dataclass
class Container:
    node: str
    root: Path  # the overlay's merged directory: the container's / (without its own mounts)
    console: Path
    popen: subprocess.Popen[bytes] | None = None
    init_pid: int | None = None  # systemd (PID 1 inside), as the host numbers it


class SystemdLab:
    """A netns Lab whose nodes run as containers with systemd as PID 1; a context manager."""

    def __init__(self, nodes: int | Sequence[str] = 3, *,
                 packages: Sequence[str] = ROOTFS_PACKAGES) -> None:
        for tool in ("systemd-nspawn", "mmdebstrap", "nsenter"):
            if shutil.which(tool) is None:
                raise LabError(f"{tool} not found (Debian packages systemd-container, "
                               "mmdebstrap, util-linux)")
        cleanup_stale()
        self.rootfs = rootfs(packages)
        self.lab = Lab(nodes, prefix=PREFIX)
        self.nodes = self.lab.nodes
        self.containers: dict[str, Container] = {}
        self._mounts: list[str] = []
        try:
            for node in self.nodes:
                self.containers[node] = self._overlay(node)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> SystemdLab:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _overlay(self, node: str) -> Container:
        d = self.lab.workdir / node
        upper, work, root = d / "upper", d / "work", d / "root"
        for p in (upper, work, root):
            p.mkdir(parents=True)
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        f"lowerdir={self.rootfs},upperdir={upper},workdir={work}", str(root)],
                       check=True, capture_output=True)
        self._mounts.append(str(root))
        # The root file system has the build host's name; systemd sets it from this file.
        (root / "etc" / "hostname").write_text(f"{node}\n")
        # A throwaway container need not survive a power cut: dpkg without an fsync per file
        # installs several times faster (install times measured here are with this).
        (root / "etc" / "dpkg" / "dpkg.cfg.d" / "lab-unsafe-io").write_text("force-unsafe-io\n")
        return Container(node, root, d / "console.log")

    # ------------------------------------------------------------------ life cycle

    def boot(self, node: str, timeout: float = 60.0) -> float:
        """Boot node's container; returns once systemd reports the boot finished (seconds)."""
        c = self.containers[node]
        if c.popen is not None and c.popen.poll() is None:
            raise LabError(f"{node} is already running")
        t0 = time.monotonic()
        with open(c.console, "ab") as console:
            c.popen = subprocess.Popen(
                ["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "--boot",
                 "--directory", str(c.root),
                 # A host-name-like machine name: the lab's "_<k>" (second lab of a process)
                 # is not allowed there.
                 "--machine", f"{self.lab.name}-{node}".replace("_", "-"),
                 "--hostname", node, "--link-journal=no", "--console=passive",
                 "--timezone=off", "--resolv-conf=off",
                 # nspawn drops CAP_NET_ADMIN unless it made the network namespace itself;
                 # this one is the lab's, private to the node, and the daemon needs it.
                 "--capability=CAP_NET_ADMIN",
                 f"--network-namespace-path=/run/netns/{self.lab.ns(node)}"],
                stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                start_new_session=True)
        deadline = t0 + timeout
        c.init_pid = None
        while c.init_pid is None:
            if c.popen.poll() is not None:
                raise LabError(f"{node}: systemd-nspawn exited {c.popen.returncode}: "
                               f"{c.console.read_text(errors='replace')[-2000:]}")
            if time.monotonic() > deadline:
                raise LabError(f"{node}: no container init after {timeout}s")
            c.init_pid = next((p for p in netns._netns_pids(self.lab.ns(node))
                               if _ns_pid(p) == 1), None)
            if c.init_pid is None:
                time.sleep(0.05)
        # --wait returns once the boot is over: "running", or "degraded" if a unit failed.
        # "offline": PID 1 is not systemd yet (nspawn's child before its exec).
        while True:
            r = self.exec(node, ["systemctl", "is-system-running", "--wait"], check=False,
                          timeout=max(1.0, deadline - time.monotonic()))
            state = r.stdout.strip()
            if state in ("running", "degraded"):
                return time.monotonic() - t0
            if time.monotonic() > deadline or c.popen.poll() is not None:
                raise LabError(f"{node}: system state {state!r}: {r.stderr.strip()}")
            time.sleep(0.05)

    def boot_all(self, timeout: float = 60.0) -> None:
        for node in self.nodes:
            self.boot(node, timeout)

    def poweroff(self, node: str, timeout: float = 20.0) -> None:
        """Shut node's container down (its systemd stops every unit), keeping its files."""
        c = self.containers[node]
        if c.popen is None:
            return
        if c.popen.poll() is None:
            # systemd-nspawn turns SIGTERM into an orderly shutdown of the container.
            with contextlib.suppress(ProcessLookupError):
                os.kill(c.popen.pid, signal.SIGTERM)
            try:
                c.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(c.popen.pid, signal.SIGKILL)
                c.popen.wait(5)
        c.popen = None
        c.init_pid = None

    def close(self) -> None:
        """Power off every container, remove the namespaces and the overlays; idempotent."""
        try:
            for node in list(self.containers):
                with contextlib.suppress(Exception):
                    self.poweroff(node, timeout=10.0)
        finally:
            try:
                # Unmounted before the lab deletes its work directory: removing the files
                # through the overlay would only whiteout the cache's files, slowly.
                for target in reversed(self._mounts):
                    _umount(target)
                self._mounts.clear()
            finally:
                if hasattr(self, "lab"):
                    self.lab.close()

    # ------------------------------------------------------------------ inside a container

    def pid(self, node: str) -> int:
        c = self.containers[node]
        if c.init_pid is None:
            raise LabError(f"{node} is not running")
        return c.init_pid

    def exec(self, node: str, argv: Sequence[str], *, check: bool = True, timeout: float = 60.0,
             input: str | None = None, env: Mapping[str, str] | None = None,
             ) -> subprocess.CompletedProcess[str]:
        """Run argv inside node's container (all its namespaces, a clean environment)."""
        full = ["nsenter", "--target", str(self.pid(node)), "--all", "--wd=/",
                "env", "-i", *(f"{k}={v}" for k, v in {**ENV, **(env or {})}.items()), *argv]
        r = subprocess.run(full, input=input, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise netns.LabCommandError(r.returncode, list(argv), r.stdout, r.stderr)
        return r

    def path(self, node: str, inside: str) -> Path:
        """A path inside the running container as the host reaches it (its mounts included)."""
        return Path(f"/proc/{self.pid(node)}/root") / inside.lstrip("/")

    def put(self, node: str, inside: str, data: bytes | str, mode: int = 0o644) -> None:
        """Write a file into the container's root (visible inside at once; not under /tmp,
        which is the container's own tmpfs)."""
        target = self.containers[node].root / inside.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data.encode() if isinstance(data, str) else data)
        target.chmod(mode)

    def install_deb(self, node: str, deb: Path, timeout: float = 300.0) -> float:
        """`apt install ./hafailover_*.deb` inside node, offline (its dependencies are in the
        root file system); returns the seconds it took."""
        inside = "/var/tmp"  # the container's own directory (its /tmp is a tmpfs)
        self.put(node, f"{inside}/{deb.name}", deb.read_bytes())
        t0 = time.monotonic()
        self.exec(node, ["sh", "-c", f"cd {inside} && apt-get install -y -q ./{deb.name}"],
                  timeout=timeout)
        return time.monotonic() - t0

    def main_pid(self, node: str, unit: str = "hafailover.service") -> int | None:
        """The unit's main process as the host numbers it (for signals from the host)."""
        r = self.exec(node, ["systemctl", "show", "--value", "-p", "MainPID", unit])
        inner = int(r.stdout.strip() or 0)
        if inner == 0:
            return None
        for pid in netns._netns_pids(self.lab.ns(node)):
            if _ns_pid(pid) == inner:
                try:
                    with open(f"/proc/{pid}/status") as f:
                        nspids = next(ln for ln in f if ln.startswith("NSpid:")).split()[1:]
                except (OSError, StopIteration):
                    continue
                if len(nspids) >= 2:  # in the container's PID namespace, not a host process
                    return pid
        return None
