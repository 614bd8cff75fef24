"""Snapshot images, one per pool profile, so that sandboxes are restored instead of booted.

Booting a sandbox means starting an interpreter and importing its preload under gVisor:
~0.3 s for a plain Python, ~5 s of CPU with numpy, pandas and matplotlib.  A restore from a
checkpoint of such a sandbox, taken while its runner waited for a request, costs ~0.2 s
either way (runsc 20240729 and later, uncompressed images).

Making an image (``_make``), per profile, in the background: boot one sandbox to "ready",
``runsc checkpoint --compression=none`` it into ``.making-*`` under ``<state>/snapshots``,
prove the image by restoring one sandbox from it under a new id with new stdio (the resume
handshake must answer), and rename the directory to its final name: a directory with a final
name is complete (atomic).  Boot and restore are both timed; a profile whose restore does
not beat its boot keeps booting.

The key of an image is a digest of everything a restore must match: the runsc binary
(content and version) and the flags it runs with, the language definition and its runner,
the rootfs tree (path and inode: a rebuild makes a new one), and the OCI spec with the
per-sandbox fields (workspace, cgroup, netns, id) replaced by placeholders.  Before each
lease the inputs that can change under a running service (the tree behind the store's
``current`` link, the runsc binary's inode, size and mtime) are looked at again; when the key
moved, a new image is made in the background and sandboxes boot until it is ready.  A
replaced image is deleted as soon as no restore reads it.  Images whose key still matches
are reused across restarts of the service; any other directory is removed at start-up.

``status()`` reports, per profile: ``off`` (with why), ``making``, ``proving`` (an image of an
earlier run restores once before it is used), ``ready`` (size, age,
boot and restore times), ``slower`` (restore did not beat a boot) or ``failed`` (why; retried
after RETRY_S or when an input changes).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import pathlib
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from orchestrator.errors import ServiceError

log = logging.getLogger(__name__)

MAKING_PREFIX = ".making-"
META = "image.json"
RETRY_S = 300.0
UNSETTLED = ("pending", "making", "proving")  # an image may be ready in a moment
# A profile keeps booting only when a restore is clearly slower than a boot: near parity (a plain
# Python: ~0.2 s either way on an idle host) a restore still costs less CPU (135 vs 160 ms
# measured here, teardown included), which is what counts under load.
SLOWER_FACTOR = 1.5
PROOF_RESTORES = 2  # the second one reads the image from the page cache, as every later one does
REMEASURES = 2  # extra boots and proofs before a profile is judged slower (``_measure_again``)


@dataclass(frozen=True)
class ProfileSpec:
    """A pool profile as the store needs it."""

    key: str  # "python", "python_preload"
    language: str
    preload: bool


@dataclass
class Image:
    profile: str
    key: str
    path: pathlib.Path
    rootfs_tree: pathlib.Path
    preload: bool
    size_bytes: int
    created_at: float  # wall clock (age in status)
    boot_ms: float | None
    restore_ms: float | None
    leases: int = 0
    retired: bool = False

    def status(self, now: float) -> dict:
        return {"key": self.key[:16], "path": str(self.path), "size_bytes": self.size_bytes,
                "age_s": round(now - self.created_at, 1), "boot_ms": _round(self.boot_ms),
                "restore_ms": _round(self.restore_ms), "leases": self.leases}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


@dataclass
class Lease:
    """A restore's hold on an image (``orchestrator.start.ImageLease``)."""

    image: Image
    _release: Callable[[Image], None]
    _released: bool = False

    @property
    def path(self) -> pathlib.Path:
        return self.image.path

    @property
    def rootfs_tree(self) -> pathlib.Path:
        return self.image.rootfs_tree

    @property
    def preload(self) -> bool:
        return self.image.preload

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._release(self.image)


@dataclass
class _ProfileState:
    spec: ProfileSpec
    state: str = "pending"
    reason: str | None = None
    image: Image | None = None
    failed_key: str | None = None
    failed_at: float = 0.0
    makes: int = 0
    make_ms: float | None = None
    settled: asyncio.Event = field(default_factory=asyncio.Event)  # set while not UNSETTLED


def directory_size(path: pathlib.Path) -> int:
    return sum(entry.stat().st_size for entry in path.iterdir() if entry.is_file())


def digest_file(path: pathlib.Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()


def file_identity(path: pathlib.Path) -> tuple:
    """Cheap identity of a file or directory: changes when it is replaced or rewritten."""
    st = os.stat(path)
    return (os.path.realpath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def image_key(parts: dict) -> str:
    """The digest of everything a restore must match (``parts`` is JSON-ready)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class KeyInputs:
    """The inputs of a profile's key; ``parts(profile)`` gives the current ones.

    ``static`` parts are fixed for the service's life (language definitions, settings); the
    runsc binary's digest is recomputed only when its identity changes.  A profile's key is
    computed again only when the digest changes or ``profile_parts`` gives another object (it
    keeps returning the same one while its inputs stand): every lease asks for it."""

    def __init__(self, runsc_binary: pathlib.Path, runsc_version: str, runsc_flags: list[str],
                 profile_parts: Callable[[ProfileSpec], dict]):
        self.runsc_binary = runsc_binary
        self.runsc_version = runsc_version
        self.runsc_flags = runsc_flags
        self._profile_parts = profile_parts
        self._runsc_identity: tuple | None = None
        self._runsc_digest: str | None = None
        self._keys: dict[ProfileSpec, tuple[str, dict, str]] = {}  # profile -> (runsc digest, parts, key)

    def runsc_digest(self, *, rehash: bool = True) -> str | None:
        """The binary's digest; None when it changed and ``rehash`` is False (hashing ~60 MB
        is for a worker thread, not for a request on the event loop)."""
        identity = file_identity(self.runsc_binary)
        if identity != self._runsc_identity:
            if not rehash:
                return None
            self._runsc_digest = digest_file(self.runsc_binary)
            self._runsc_identity = identity
        return self._runsc_digest

    def key(self, profile: ProfileSpec, *, rehash: bool = True) -> str | None:
        """The profile's current key; None when the runsc binary changed and ``rehash`` is False."""
        digest = self.runsc_digest(rehash=rehash)
        if digest is None:
            return None
        parts = self._profile_parts(profile)
        known = self._keys.get(profile)
        if known is not None and known[0] == digest and known[1] is parts:
            return known[2]
        key = image_key({"runsc": {"digest": digest, "version": self.runsc_version, "flags": self.runsc_flags},
                         "profile": {"key": profile.key, "language": profile.language, "preload": profile.preload},
                         **parts})
        self._keys[profile] = (digest, parts, key)
        return key


class SnapshotStore:
    """Images under ``<state>/snapshots``, made and replaced in the background.

    ``make_sandbox(profile, lease)`` builds a sandbox of the profile: booted (for the image)
    when ``lease`` is None, restored from it otherwise.  ``rootfs_tree(profile)`` is the tree
    a sandbox of the profile boots on now."""

    def __init__(self, root: pathlib.Path, profiles: list[ProfileSpec], inputs: KeyInputs | None,
                 make_sandbox: Callable, rootfs_tree: Callable[[ProfileSpec], pathlib.Path], *,
                 off: dict[str, str] | None = None, uncompressed: bool = True,
                 slower_factor: float = SLOWER_FACTOR):
        self.root = root
        self._slower_factor = slower_factor
        self.inputs = inputs
        self._make_sandbox = make_sandbox
        self._rootfs_tree = rootfs_tree
        self._uncompressed = uncompressed
        self._profiles = {p.key: _ProfileState(p) for p in profiles}
        for key, reason in (off or {}).items():
            if key in self._profiles:
                self._profiles[key].state, self._profiles[key].reason = "off", reason
        self._retired: list[Image] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closing = False
        self.restore_proven: bool | None = None  # a restore under a new id with new stdio answered

    # -- public -----------------------------------------------------------------------------

    def start(self) -> None:
        """Adopt matching images from an earlier run, remove the rest, and start making."""
        self._adopt_existing()
        if any(state.state != "off" for state in self._profiles.values()):
            self._task = asyncio.get_running_loop().create_task(self._make_loop(), name="snapshots")

    def lease(self, profile_key: str) -> Lease | None:
        """A hold on the profile's current image, or None (boot instead).  A stale image is
        not leased; its replacement is made in the background."""
        state = self._profiles.get(profile_key)
        # "failed" with an image: its inputs could not be read (a rootfs or runsc binary gone
        # for a while); once they read the same again, the image serves again.
        if state is None or state.image is None or state.state not in ("ready", "failed"):
            return None
        if not self._is_current(state):
            return None
        self._recover(state)
        image = state.image
        image.leases += 1
        return Lease(image, self._release)

    async def settled(self, profile_key: str, timeout: float) -> None:
        """Return once the profile's image is ready or is not coming soon (off, failed,
        slower), or after ``timeout``: a pool then starts its members from the image instead
        of booting them the slow way a moment before it is ready."""
        state = self._profiles.get(profile_key)
        if state is None or state.state not in UNSETTLED:
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(state.settled.wait(), timeout)

    async def wait_ready(self, profile_key: str, timeout: float = 120.0) -> Image:
        """Wait until the profile's image is ready (tests and benchmarks)."""
        deadline = time.monotonic() + timeout
        while True:
            state = self._profiles[profile_key]
            if state.state == "ready" and state.image is not None:
                return state.image
            if state.state in ("off", "failed", "slower") or time.monotonic() > deadline:
                raise TimeoutError(f"snapshot {profile_key}: {state.state} ({state.reason})")
            await asyncio.sleep(0.05)

    def status(self) -> dict:
        now = time.time()
        profiles = {}
        for key, state in sorted(self._profiles.items()):
            entry = {"state": state.state, "reason": state.reason, "makes": state.makes,
                     "make_ms": _round(state.make_ms)}
            if state.image is not None:
                entry["image"] = state.image.status(now)
            profiles[key] = entry
        return {"dir": str(self.root), "restore_proven": self.restore_proven, "profiles": profiles,
                "retired_images": len(self._retired)}

    async def close(self) -> None:
        """Stop making images; the images stay on disk for the next start."""
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for path in self.root.glob(MAKING_PREFIX + "*") if self.root.is_dir() else []:
            shutil.rmtree(path, ignore_errors=True)

    # -- keys -------------------------------------------------------------------------------

    def _key(self, state: _ProfileState, *, rehash: bool = True) -> str | None:
        assert self.inputs is not None
        return self.inputs.key(state.spec, rehash=rehash)

    def _is_current(self, state: _ProfileState) -> bool:
        """Does the image still match its inputs?  If not, mark it stale and wake the maker.
        Cheap (stat calls): a changed runsc binary counts as stale without hashing it here."""
        assert state.image is not None
        try:
            current = self._key(state, rehash=False)
        except OSError as exc:
            self._set(state, "failed", f"compute the image key: {exc}")
            return False
        if current == state.image.key:
            return True
        log.info("snapshot %s: inputs changed (rootfs or runsc); making a new image", state.spec.key)
        self._retire(state.image)
        state.image = None
        self._set(state, "pending", "inputs changed")
        self._wake.set()
        return False

    def _recover(self, state: _ProfileState) -> None:
        """The inputs of a failed profile's image read the same again: it is ready again."""
        if state.state == "failed" and state.image is not None:
            log.info("snapshot %s: the image's inputs are back (%s); serving it again", state.spec.key, state.reason)
            self._set(state, "ready", None)

    # -- making -----------------------------------------------------------------------------

    async def _make_loop(self) -> None:
        while not self._closing:
            made_any = False
            for state in list(self._profiles.values()):
                if self._closing:
                    return
                if state.state == "proving":
                    await self._adopt(state)
                if await self._needs_image(state):
                    await self._make(state)
                    made_any = True
            if made_any:
                continue
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=RETRY_S / 10)

    async def _adopt(self, state: _ProfileState) -> None:
        """An image of an earlier run: restore from it once before serving it."""
        image = state.image
        assert image is not None
        try:
            image.restore_ms = await self._prove(state.spec, image)
        except (ServiceError, OSError) as exc:
            log.warning("snapshot %s: the image of an earlier run does not restore (%s); making a new one",
                        state.spec.key, exc)
            state.image = None
            shutil.rmtree(image.path, ignore_errors=True)
            self._set(state, "pending", "the image of an earlier run did not restore")
            return
        self._set(state, "ready", "reused from an earlier run")
        log.info("snapshot %s: reusing %s (restore %.0f ms)", state.spec.key, image.path, image.restore_ms or 0)

    async def _needs_image(self, state: _ProfileState) -> bool:
        if state.state in ("off", "making", "proving"):
            return False
        try:
            key = await asyncio.to_thread(self._key, state)
        except OSError as exc:
            self._set(state, "failed", f"compute the image key: {exc}")
            return False
        if state.image is not None and state.image.key == key:
            self._recover(state)
            return False
        if state.state in ("failed", "slower") and state.failed_key == key and time.monotonic() - state.failed_at < RETRY_S:
            return False
        if state.image is not None:
            self._retire(state.image)
            state.image = None
        return True

    async def _make(self, state: _ProfileState) -> None:
        profile = state.spec
        key = await asyncio.to_thread(self._key, state)
        self._set(state, "making", None)
        started = time.monotonic()
        state.makes += 1
        work = self.root / f"{MAKING_PREFIX}{profile.key}-{uuid.uuid4().hex[:8]}"
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            work.mkdir(mode=0o700)
            tree = self._rootfs_tree(profile)
            boot_ms = await self._checkpoint(profile, work)
            image = Image(profile=profile.key, key=key, path=work, rootfs_tree=tree, preload=profile.preload,
                          size_bytes=directory_size(work), created_at=time.time(), boot_ms=boot_ms,
                          restore_ms=None)
            image.restore_ms = await self._prove(profile, image)
            if self._is_slower(image):
                await self._measure_again(profile, image)
            final = self.root / f"{profile.key}-{key[:16]}"
            if final.exists():
                shutil.rmtree(final)
            self._write_meta(work, image)
            os.rename(work, final)
            image.path = final
        except (ServiceError, OSError) as exc:
            shutil.rmtree(work, ignore_errors=True)
            state.failed_key, state.failed_at = key, time.monotonic()
            self._set(state, "failed", f"make snapshot: {exc}")
            log.error("snapshot %s: %s; its sandboxes boot instead", profile.key, state.reason)
            return
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        state.make_ms = (time.monotonic() - started) * 1000
        if self._is_slower(image):
            shutil.rmtree(final, ignore_errors=True)
            state.failed_key, state.failed_at = key, time.monotonic()
            self._set(state, "slower", f"a restore took {image.restore_ms:.0f} ms, a boot {image.boot_ms:.0f} ms: "
                                       "sandboxes boot")
            log.info("snapshot %s: %s", profile.key, state.reason)
            return
        state.image = image
        self._set(state, "ready", None)
        log.info("snapshot %s: ready, %.1f MB, boot %.0f ms vs restore %.0f ms (made in %.0f ms)", profile.key,
                 image.size_bytes / 1e6, image.boot_ms or 0, image.restore_ms or 0, state.make_ms)

    def _is_slower(self, image: Image) -> bool:
        return image.restore_ms is not None and image.boot_ms is not None and \
            image.restore_ms > self._slower_factor * image.boot_ms

    async def _measure_again(self, profile: ProfileSpec, image: Image) -> None:
        """One boot and one restore each are at the mercy of whatever else the host does at that
        moment (under load a restore measured 438 ms against a 237 ms boot, then 150 against 250
        idle): before a profile is given up, both are sampled again and the least disturbed
        sample of each (the minimum) decides."""
        boots = [image.boot_ms] if image.boot_ms is not None else []
        restores = [image.restore_ms] if image.restore_ms is not None else []
        for _ in range(REMEASURES):
            sandbox = self._make_sandbox(profile, None)
            try:
                await sandbox.boot()
            finally:
                await sandbox.destroy()
            if sandbox.boot_ms is not None:
                boots.append(sandbox.boot_ms)
            restores.append(await self._prove(profile, image))
        image.boot_ms = min(boots) if boots else None
        image.restore_ms = min(value for value in restores if value is not None) if restores else None

    async def _checkpoint(self, profile: ProfileSpec, work: pathlib.Path) -> float | None:
        """Boot a sandbox of the profile and checkpoint it into ``work``; its boot time."""
        sandbox = self._make_sandbox(profile, None)
        try:
            await sandbox.boot()
            await sandbox.checkpoint(work, uncompressed=self._uncompressed)
        finally:
            await sandbox.destroy()
        if not any(work.iterdir()):
            raise ServiceError(f"checkpoint {profile.key}: runsc wrote no image")
        return sandbox.boot_ms

    async def _prove(self, profile: ProfileSpec, image: Image) -> float | None:
        """Restore sandboxes from ``image`` (new id, new stdio, resume handshake); the last
        one's time."""
        restore_ms = None
        for _ in range(PROOF_RESTORES):
            sandbox = self._make_sandbox(profile, Lease(image, lambda _: None))
            try:
                await sandbox.boot()
            except ServiceError:
                self.restore_proven = False
                raise
            finally:
                await sandbox.destroy()
            restore_ms = sandbox.boot_ms
        self.restore_proven = True
        return restore_ms

    @staticmethod
    def _write_meta(directory: pathlib.Path, image: Image) -> None:
        meta = {"profile": image.profile, "key": image.key, "rootfs_tree": str(image.rootfs_tree),
                "preload": image.preload, "created_at": image.created_at, "boot_ms": image.boot_ms,
                "restore_ms": image.restore_ms}
        with open(directory / META, "w", encoding="utf-8") as handle:
            json.dump(meta, handle, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())

    # -- disk -------------------------------------------------------------------------------

    def _adopt_existing(self) -> None:
        """Reuse images of an earlier run whose key still matches; remove everything else."""
        if not self.root.is_dir():
            return
        wanted = {}
        for state in self._profiles.values():
            if state.state == "off" or self.inputs is None:
                continue
            with contextlib.suppress(OSError):
                wanted[f"{state.spec.key}-{self._key(state)[:16]}"] = state
        for entry in sorted(self.root.iterdir()):
            state = wanted.get(entry.name)
            image = self._load(entry, state) if state is not None else None
            if image is None:
                shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
                continue
            state.image = image
            self._set(state, "proving", "made by an earlier run")
            log.info("snapshot %s: found %s of an earlier run", state.spec.key, entry)

    def _load(self, path: pathlib.Path, state: _ProfileState) -> Image | None:
        try:
            meta = json.loads((path / META).read_text())
            key = self._key(state)
            if meta.get("key") != key:
                return None
            return Image(profile=state.spec.key, key=key, path=path, rootfs_tree=pathlib.Path(meta["rootfs_tree"]),
                         preload=bool(meta["preload"]), size_bytes=directory_size(path),
                         created_at=float(meta["created_at"]), boot_ms=meta.get("boot_ms"),
                         restore_ms=meta.get("restore_ms"))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _retire(self, image: Image) -> None:
        image.retired = True
        self._retired.append(image)
        self._collect()

    def _release(self, image: Image) -> None:
        image.leases -= 1
        self._collect()

    def _collect(self) -> None:
        """Delete retired images nobody reads any more."""
        for image in list(self._retired):
            if image.leases <= 0:
                self._retired.remove(image)
                shutil.rmtree(image.path, ignore_errors=True)
                log.info("snapshot %s: removed the replaced image %s", image.profile, image.path.name)

    def _set(self, state: _ProfileState, name: str, reason: str | None) -> None:
        state.state, state.reason = name, reason
        if name in UNSETTLED:
            state.settled.clear()
        else:
            state.settled.set()
