"""`kakumei serve` raises its soft open-files limit to the hard one: each open event stream is
a socket, and the usual soft limit of 1,024 would refuse connections near a thousand streams."""

from __future__ import annotations

import os
import resource
import shlex
import sys
from pathlib import Path


from tests.support import listening_socket, spawn, stop, url_of, wait_until_serving


def test_serve_raises_its_open_files_limit(kakumei_home: Path, tmp_path: Path) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    low = 256
    sock, log = listening_socket(), tmp_path / "serve.log"
    serve = [sys.executable, "-m", "kakumei.cli", "serve", "--fd", str(sock.fileno()), "--no-local-worker",
             "--database", f"sqlite:///{tmp_path / 'k.db'}"]
    env = {**os.environ, "KAKUMEI_HOME": str(kakumei_home), "KAKUMEI_DEVICE": "cpu"}
    proc = spawn(["sh", "-c", f"ulimit -Sn {low} && exec {shlex.join(serve)}"], env, log, pass_fds=[sock.fileno()])
    try:
        wait_until_serving(proc, url_of(sock), log, 60)
        line = next(li for li in Path(f"/proc/{proc.pid}/limits").read_text().splitlines() if li.startswith("Max open files"))
        soft = line.split()[3]
        assert soft == str(max(low, 1 << 20) if hard == resource.RLIM_INFINITY else hard), line
        assert hard == resource.RLIM_INFINITY or hard > low
    finally:
        stop(proc)
        sock.close()
