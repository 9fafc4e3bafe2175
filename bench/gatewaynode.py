"""One `ipam serve` node on the bench's etcd, for the baseline the DHCP targets name:
"the gateway's single-source booking rate of the same run" (issue 10).

The node shares the bench's key prefix, so the Private Networks the bench creates through
the allocator are the node's too; its bookings are driven over HTTP by `bench.loadgen`
in a process of its own, as a product's API client would book.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Self

from .rig import HttpError, http, stop_process

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 30.0  # seconds a fresh node may take to answer /readyz


class GatewayNode:
    """`ipam serve` on 127.0.0.1 with a fresh admin secret; use `with`."""

    def __init__(self, etcd_endpoints: list[str], prefix: str, region: str) -> None:
        self.etcd_endpoints, self.prefix, self.region = etcd_endpoints, prefix, region
        self.admin_secret = str(uuid.uuid4())
        self.url = ""
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="bench-gateway-", suffix=".log")

    def __enter__(self) -> Self:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        env = {**os.environ, "IPAM_ADMIN_SECRET_KEY": self.admin_secret,
               "IPAM_ETCD_ENDPOINTS": ",".join(self.etcd_endpoints), "IPAM_REGION": self.region,
               "IPAM_ETCD_PREFIX": self.prefix, "IPAM_PORT": str(port),
               "IPAM_HOST": "127.0.0.1", "IPAM_LOG_LEVEL": "warning"}
        self._proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve"], cwd=ROOT,
                                      env=env, stdout=self._log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + READY_TIMEOUT
        while True:  # bounded by the deadline
            try:
                http(self.url, "GET", "/readyz", timeout=1.0)
                return self
            except (OSError, HttpError):
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    self.__exit__()
                    raise RuntimeError(f"the bench's gateway did not start: {self.log_tail()}")
                time.sleep(0.1)

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            stop_process(self._proc)
            self._proc = None
        self._log.close()

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def log_tail(self, lines: int = 20) -> str:
        self._log.flush()
        text = Path(self._log.name).read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def project_key(self, organization_id: str, project_id: str) -> str:
        """The secret of a new project_member key of `project_id`."""
        made = http(self.url, "POST", "/ipam/admin/v1/api-keys", {
            "organization_id": organization_id, "project_ids": [project_id],
            "role": "project_member", "description": "bench dhcp"}, self.admin_secret)
        return str(made["secret_key"])

    def booking_job(self, token: str, project_id: str, pn_id: str, concurrency: int,
                    count: int, seconds: float, quiet: bool) -> dict[str, Any]:
        """The `bench.loadgen` job booking `count` IPs in `pn_id` at `concurrency`."""
        return {"mode": "book", "url": self.url, "token": token, "project_id": project_id,
                "region": self.region, "pns": [pn_id], "concurrency": concurrency,
                "count": count, "seconds": seconds, "quiet": quiet,
                "label": f"gateway books C={concurrency}"}
