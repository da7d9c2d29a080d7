"""Grafana's admin password, never committed: generated on first run and printed once.

Run by the `grafana-password` one-shot service before Grafana starts (docker-compose.yml); Grafana
reads the file through GF_SECURITY_ADMIN_PASSWORD__FILE. It runs as Grafana's own user (uid 472), so
the file in the `grafana-secrets` volume is Grafana's, mode 0400: no other user reads it. The volume
is mounted at /var/tmp because a fresh volume takes its mount point's mode from the image, and
/var/tmp's (1777, sticky) lets that non-root user create the file and nobody else replace it.

  first run                      generate, write, print it once (docker compose logs grafana-password)
  later runs                     keep it, print only that it was kept
  GRAFANA_ADMIN_PASSWORD set     use that one (say where it came from, never echo it)
  --rotate                       a new one, printed once: docker compose run --rm grafana-password --rotate
                                 then docker compose restart grafana
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

SECRET_FILE = Path(os.environ.get("GRAFANA_SECRET_FILE", "/var/tmp/grafana-admin-password"))
MIN_LENGTH = 12


def write_secret(path: Path, password: str) -> None:
    # Written next to the target and renamed: Grafana never reads half a password.
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
    with os.fdopen(fd, "w") as out:
        out.write(password)
    os.replace(partial, path)


def main(argv: list[str]) -> int:
    rotate = "--rotate" in argv
    given = os.environ.get("GRAFANA_ADMIN_PASSWORD", "")
    if given:
        if len(given) < MIN_LENGTH:
            print(f"GRAFANA_ADMIN_PASSWORD is shorter than {MIN_LENGTH} characters; refusing it", file=sys.stderr)
            return 2
        write_secret(SECRET_FILE, given)
        print("Grafana admin password: taken from GRAFANA_ADMIN_PASSWORD")
        return 0
    if SECRET_FILE.exists() and not rotate:
        print(f"Grafana admin password: unchanged (kept in {SECRET_FILE}; --rotate for a new one)")
        return 0
    password = secrets.token_urlsafe(18)
    write_secret(SECRET_FILE, password)
    print(
        "\n"
        f"  Grafana admin password (user admin), shown this once: {password}\n"
        "  Anonymous visitors can look, not edit. Rotate: docker compose run --rm grafana-password --rotate\n",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
