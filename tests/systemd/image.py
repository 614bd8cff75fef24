"""The image systemd boots in: Debian bookworm with systemd 252 built by mmdebstrap, the
service's Python environment already made (the ``make setup`` step, as it would be on a host),
and host-touching units masked.  No docker build, no network in docker: mmdebstrap writes a
tarball, ``docker import`` makes the image.

The tag is a hash of everything that goes in, so an image is rebuilt exactly when one of those
changes (or is missing: CI starts from a clean clone).  The checkout itself is copied into each
container at /opt/gvisor-sandbox, where ``make install-unit`` renders the unit from it.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import shlex
import shutil
import subprocess
import tempfile
import tomllib

from rootfs_builder.mmdebstrap import read_pip_access

HERE = pathlib.Path(__file__).resolve().parent
INSTALL_DIR = "/opt/gvisor-sandbox"
SUITE = "bookworm"
PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "python3-venv", "make", "procps", "iproute2", "nftables",
            "dnsmasq-base")  # egress mode: the sandboxes' resolver (the binary only, no system service)
# Units that would change host-wide settings from a container holding every capability but
# one, or only add noise.
MASKED = ("systemd-sysctl.service", "systemd-modules-load.service", "systemd-binfmt.service",
          "proc-sys-fs-binfmt_misc.automount", "proc-sys-fs-binfmt_misc.mount", "systemd-random-seed.service",
          "systemd-journald-audit.socket", "getty.target", "console-getty.service", "systemd-firstboot.service",
          "systemd-hwdb-update.service", "sys-kernel-debug.mount", "sys-kernel-tracing.mount",
          "sys-kernel-config.mount", "sys-fs-fuse-connections.mount", "apt-daily.timer", "apt-daily-upgrade.timer",
          "dpkg-db-backup.timer", "e2scrub_all.timer", "fstrim.timer", "systemd-tmpfiles-clean.timer")
BUILD_TIMEOUT_S = 900
RECIPE_VERSION = "1"  # bump when the build below changes in a way the inputs do not show


def dependencies(repo: pathlib.Path) -> list[str]:
    return sorted(tomllib.loads((repo / "pyproject.toml").read_text())["project"]["dependencies"])


def image_tag(repo: pathlib.Path) -> str:
    digest = hashlib.sha256()
    for part in (RECIPE_VERSION, SUITE, *PACKAGES, *MASKED, *dependencies(repo)):
        digest.update(part.encode() + b"\0")
    digest.update((HERE / "sd-entry").read_bytes())
    return f"gvisor-sandbox-systemd-test:{digest.hexdigest()[:16]}"


def build_argv(repo: pathlib.Path, stage: pathlib.Path, tarball: pathlib.Path, ca: bool, pip_env: dict) -> list[str]:
    venv = f"{INSTALL_DIR}/.venv"
    env = ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"] + (["PIP_CERT=/tmp/hostca.crt"] if ca else [])
    env += [f"{name}={value}" for name, value in sorted(pip_env.items())]
    pip = shlex.join(["env", "-i", *env, f"{venv}/bin/pip", "install", "--no-cache-dir", "--progress-bar=off",
                      "-q", *dependencies(repo)])
    # The checkout on sys.path wherever python starts (what `pip install -e .` gives on a host).
    pth = (f'chroot "$1" {venv}/bin/python -c '
           + shlex.quote(f"import sysconfig, pathlib; pathlib.Path(sysconfig.get_paths()['purelib'], "
                         f"'gvisor-sandbox-checkout.pth').write_text('{INSTALL_DIR}\\n')"))
    hooks = [
        f"copy-in {stage / 'sd-entry'} /usr/local/sbin",
        'chroot "$1" systemctl mask ' + " ".join(MASKED),
        f'chroot "$1" python3 -m venv {venv}',
        *([f"copy-in {stage / 'hostca.crt'} /tmp"] if ca else []),
        f'chroot "$1" {pip}',
        'rm -f "$1"/tmp/hostca.crt',
        pth,
    ]
    return ["mmdebstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
            *(f"--customize-hook={hook}" for hook in hooks), SUITE, str(tarball)]


def ensure_image(docker, repo: pathlib.Path, log_path: pathlib.Path) -> str:
    """The image's tag, built and imported into ``docker`` (a PrivateDocker) if it is missing."""
    tag = image_tag(repo)
    if docker.docker("image", "inspect", tag, check=False).returncode == 0:
        return tag
    pip = read_pip_access(os.environ)
    with tempfile.TemporaryDirectory(prefix="gvs-sdimage-") as work:
        stage = pathlib.Path(work)
        shutil.copyfile(HERE / "sd-entry", stage / "sd-entry")
        os.chmod(stage / "sd-entry", 0o755)
        if pip.ca_bundle is not None:
            shutil.copyfile(pip.ca_bundle, stage / "hostca.crt")
        tarball = stage / "rootfs.tar"
        argv = build_argv(repo, stage, tarball, pip.ca_bundle is not None, dict(pip.env))
        with open(log_path, "wb") as log:
            done = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, timeout=BUILD_TIMEOUT_S,
                                  env={**os.environ, "TMPDIR": work})
        if done.returncode != 0:
            raise AssertionError(f"mmdebstrap exited {done.returncode}: {log_path.read_text(errors='replace')[-3000:]}")
        docker.docker("import", "--change", "ENV container=docker",
                      "--change", 'ENTRYPOINT ["/usr/local/sbin/sd-entry"]', "--change", 'CMD ["/sbin/init"]',
                      str(tarball), tag, timeout=300)
    for line in docker.docker("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.decode().split():
        if line.startswith("gvisor-sandbox-systemd-test:") and line != tag:
            docker.docker("rmi", line, check=False)  # an image of older inputs
    return tag
