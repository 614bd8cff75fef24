"""What a stopped service left on the host, by kind: runsc processes and containers, runsc
state files, sandbox cgroups (and the parent, which is then removed), workspace mounts,
sandbox directories, network namespaces, veths, nftables tables.  Snapshot images are kept
on purpose (the next start reuses them) and listed apart."""

from __future__ import annotations

import pathlib
import shutil
import subprocess

from orchestrator.bench import host
from orchestrator.host import firewall, netns
from orchestrator.host.cgroups import Cgroups
from orchestrator.service import CGROUP_ROOT

KINDS = ("runsc", "state", "cgroups", "mounts", "directories", "netns", "nft")


def mounts_under(path: pathlib.Path, mountinfo: pathlib.Path = pathlib.Path("/proc/self/mountinfo")) -> list[str]:
    prefix = str(path)
    points = [line.split()[4] for line in mountinfo.read_text().splitlines() if len(line.split()) > 4]
    return [point for point in points if point == prefix or point.startswith(prefix + "/")]


def find(runsc_binary: pathlib.Path, state_dir: pathlib.Path, cgroup_parent: str) -> dict[str, list[str]]:
    """Everything of the service at ``state_dir`` still on the host, per kind (empty lists:
    nothing).  Removes the (then empty) cgroup parent, as ``make clean`` would."""
    root = state_dir / "runsc"
    found: dict[str, list[str]] = {kind: [] for kind in KINDS}
    found["runsc"] = host.find_leftovers(runsc_binary, [root])
    found["state"] = sorted(entry.name for entry in root.iterdir()) if root.is_dir() else []
    cgroups = Cgroups(CGROUP_ROOT, cgroup_parent)
    found["cgroups"] = [f"/{cgroup_parent}/{name}" for name in cgroups.list_sandboxes()]
    if not found["cgroups"]:
        found["cgroups"] = host.remove_cgroup_parent(cgroup_parent)
    found["mounts"] = mounts_under(state_dir)
    sandboxes = state_dir / "sandboxes"
    found["directories"] = sorted(entry.name for entry in sandboxes.iterdir()) if sandboxes.is_dir() else []
    prefix = netns.instance_prefix(state_dir)
    netns_dir = pathlib.Path("/var/run/netns")
    found["netns"] = sorted(f"netns {p.name}" for p in netns_dir.glob(f"{prefix}*")) if netns_dir.is_dir() else []
    found["netns"] += sorted(f"link {p.name}" for p in pathlib.Path("/sys/class/net").glob(f"{prefix}*"))
    if shutil.which(firewall.NFT):
        tables = subprocess.run([firewall.NFT, "list", "tables"], capture_output=True, text=True, timeout=30).stdout
        found["nft"] = [line.strip() for line in tables.splitlines() if firewall.table_name(prefix) in line]
    return found


def kept_images(state_dir: pathlib.Path) -> list[str]:
    images = state_dir / "snapshots"
    return sorted(entry.name for entry in images.iterdir()) if images.is_dir() else []
