"""Fetch a Go toolchain from the Go module proxy (the `golang.org/toolchain` module, which `go`
itself downloads for GOTOOLCHAIN), check its pinned SHA-256 and unpack it: the test image builds
kustomize and promtool with it, where no `golang` image can be pulled.

    python go_toolchain.py /opt/go
"""

import hashlib
import os
import platform
import shutil
import stat
import sys
import urllib.request
import zipfile

VERSION = "go1.25.14"
SHA256 = {  # of the proxy's zip, per architecture
    "amd64": "1bb543a7745d4c6e045a1bfdb4c4d5a0b05b71ee8b8ff72c0a351598b26991a4",
    "arm64": "eee0803776a2a3d42f0620d7b0156277350debb5d39c99a9b61c8b12108fd92c",
}
PROXY = os.environ.get("GOPROXY", "https://proxy.golang.org").split(",")[0]


def main(target: str) -> None:
    arch = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}[platform.machine()]
    module = f"v0.0.1-{VERSION}.linux-{arch}"
    url = f"{PROXY}/golang.org/toolchain/@v/{module}.zip"
    archive = f"/tmp/{module}.zip"
    urllib.request.urlretrieve(url, archive)
    with open(archive, "rb") as downloaded:
        digest = hashlib.sha256(downloaded.read()).hexdigest()
    if digest != SHA256[arch]:
        sys.exit(f"{url}: sha256 {digest}, expected {SHA256[arch]}")
    prefix = f"golang.org/toolchain@{module}/"
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            if info.is_dir() or not info.filename.startswith(prefix):
                continue
            path = os.path.join(target, info.filename[len(prefix) :])
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with zf.open(info) as src, open(path, "wb") as dst:
                shutil.copyfileobj(src, dst)
            mode = info.external_attr >> 16  # zipfile drops the permission bits: restore them
            os.chmod(path, stat.S_IMODE(mode) or 0o644)
    os.remove(archive)


if __name__ == "__main__":
    main(sys.argv[1])
