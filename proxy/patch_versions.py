"""The check each contained extension of hypercorn or h11 makes before it patches anything.

Every such module (`proxy.serving.install_http11_trailers` lists them) was written against one minor version of
what it patches and refuses to install on another, naming itself, the version it expects, the one it found and
what to look at before the patch is updated or dropped. Each then checks the seams it patches as well; that part
is its own.
"""

from __future__ import annotations

import importlib.metadata


def require(patch: str, supported: dict[str, str], check: str) -> dict[str, str]:
    """The installed version of each package in `supported` (package -> version prefix, such as "0.18.").

    Raises RuntimeError for the first one that does not start with its prefix: "proxy.<patch> patches <package>
    <prefix>x, but <package> <version> is installed; <check>, and update or drop the patch"."""
    versions = {package: importlib.metadata.version(package) for package in supported}
    for package, prefix in supported.items():
        if not versions[package].startswith(prefix):
            raise RuntimeError(
                f"proxy.{patch} patches {package} {prefix}x, but {package} {versions[package]} is installed; "
                f"{check}, and update or drop the patch"
            )
    return versions
