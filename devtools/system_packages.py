"""Debian packages the tests and `make deploy-test` need, installed with apt when missing.

Nothing is downloaded at run time but through Debian's own package registry: a test that needs
nginx or PostgreSQL calls `ensure(...)`, which finds the program or installs its package (as root,
as CI and the developers' machines run).

    python -m devtools.system_packages nginx-light:nginx docker.io:dockerd
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

_apt_updated = False


def _found(program: str) -> str | None:
    """`program` on PATH, in the sbin folders root has, or as an absolute path."""
    if program.startswith("/"):
        return program if Path(program).exists() else None
    return shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin:/usr/lib/nginx")


def ensure(package: str, program: str) -> str:
    """The path of `program`, installing Debian's `package` first when it is missing.

    Raises:
        RuntimeError: not root, or apt could not install it.
    """
    global _apt_updated
    found = _found(program)
    if found:
        return found
    if os.geteuid() != 0:
        raise RuntimeError(f"{program} is missing, and only root can install {package} with apt")
    print(f"{program} is missing: installing Debian's {package} package", flush=True)
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    commands = [["apt-get", "install", "-y", "-qq", "--no-install-recommends", package]]
    if not _apt_updated:
        commands.insert(0, ["apt-get", "update", "-qq"])
    for command in commands:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}")
    _apt_updated = True
    found = _found(program)
    if not found:
        raise RuntimeError(f"Debian's {package} is installed but {program} is still not found")
    return found


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python -m devtools.system_packages PACKAGE:PROGRAM [...]")
    for spec in sys.argv[1:]:
        package, _, program = spec.partition(":")
        print(ensure(package, program or package))
