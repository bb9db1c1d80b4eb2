"""One training run per vLLM server: the claim a run holds on the server it generates with.

Two runs pointed at one server train on each other's samples (each weight sync replaces the other run's weights in
the server) and nothing fails. So a run claims its server when training starts - the RPC `gad_claim` of gad_trl's
worker extension (`worker_extension.GADWorkerExtension`, through the dev-mode `POST /collective_rpc`), which keeps the
claim in the server's workers - renews it every `HEARTBEAT_S` seconds from a background thread, and releases it when
training ends. A server claimed by another run is refused at the start, naming that run; a claim lost during the run
(the run stalled past `CLAIM_TTL_S` and another run took the server) stops it at its next generation or weight sync.
The claim of a killed run expires `CLAIM_TTL_S` seconds after its last renewal (measured on the server's clock).

A server without the extension (`trl vllm-serve`, `gad-trl vllm-serve --weight-sync nccl` unless started with
`--worker-extension-cls gad_trl.vllm.worker_extension.GADWorkerExtension`) cannot hold a claim: the run warns that
sharing cannot be detected.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid

logger = logging.getLogger(__name__)

CLAIM_TTL_S = 60.0  # a claim not renewed for this long is free (a killed run's)
HEARTBEAT_S = 10.0  # renewal period, well within the ttl


def run_holder(output_dir: str) -> str:
    """How a run is named to another run that is refused its server."""
    return f"pid {os.getpid()} on {socket.gethostname()}, output_dir {os.path.abspath(output_dir)}"


class ServerClaim:
    """This run's claim on the vLLM server at `base_url`, sent through `session` (the trainer's client session)."""

    def __init__(self, session, base_url: str, holder: str, ttl: float = CLAIM_TTL_S, interval: float = HEARTBEAT_S,
                 timeout: float | None = 30.0):
        self.session, self.base_url, self.holder = session, base_url.rstrip("/"), holder
        self.ttl, self.interval, self.timeout = ttl, interval, timeout
        self.run_id = uuid.uuid4().hex
        self.lost: str | None = None  # why the claim was lost during the run (set by the heartbeat)
        self.requests = 0  # `POST /collective_rpc` sent (claim, renewals, release)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _rpc(self, release: bool = False) -> dict | None:
        """None when every worker granted the claim (or the release), else the refusal (`holder`, `age`, `ttl`)."""
        self.requests += 1
        response = self.session.post(
            f"{self.base_url}/collective_rpc", timeout=self.timeout,
            json={"method": "gad_claim", "kwargs": {"run_id": self.run_id, "holder": self.holder, "ttl": self.ttl,
                                                    "release": release}},
        )  # fmt: skip
        response.raise_for_status()
        results = response.json().get("results") or []
        return next((r for r in results if not (isinstance(r, dict) and r.get("granted"))), None)

    def _in_use(self, refusal, shown_url: str) -> str:
        holder = refusal.get("holder", "another run") if isinstance(refusal, dict) else "another run"
        age = refusal.get("age") if isinstance(refusal, dict) else None
        seen = f", renewed {age:.0f} s ago" if isinstance(age, (int, float)) else ""
        return (
            f"The vLLM server at {shown_url} is in use by another training run ({holder}{seen}). Two runs on one "
            "server train on each other's samples: each run's weight sync replaces the other's weights in the "
            "server. Give each run its own server (e.g. another --port for `gad-trl vllm-serve`, and that port in "
            f"this run's vllm_server_base_url), or wait for that run to end (a killed run's claim expires "
            f"{self.ttl:.0f} s after its last renewal)."
        )

    def acquire(self, shown_url: str) -> str | None:
        """Claim the server and start renewing the claim; the reason to refuse the run when another holds it."""
        refusal = self._rpc()
        if refusal is not None:
            return self._in_use(refusal, shown_url)
        self._thread = threading.Thread(target=self._renew, args=(shown_url,), name="gad-vllm-claim", daemon=True)
        self._thread.start()
        return None

    def _renew(self, shown_url: str) -> None:
        while not self._stop.wait(self.interval) and self.renew(shown_url):
            pass

    def renew(self, shown_url: str) -> bool:
        """Renew the claim once; False (and `lost` set) when another run has taken the server meanwhile."""
        try:
            refusal = self._rpc()
        except Exception as err:  # noqa: BLE001 - a dead server is reported by the run's next request
            logger.debug("Renewing the claim on the vLLM server failed: %s", err)
            return True
        if refusal is not None:
            self.lost = (f"This run's claim on the vLLM server lapsed (not renewed for {self.ttl:.0f} s: the run "
                         "stalled?) and another run took the server. " + self._in_use(refusal, shown_url))
            logger.error(self.lost)
            return False
        return True

    def release(self) -> None:
        """Stop renewing and drop the claim (best effort: a server gone meanwhile holds nothing)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=(self.timeout or 30.0) + 1.0)
        try:
            self._rpc(release=True)
        except Exception as err:  # noqa: BLE001 - the claim then expires by itself
            logger.debug("Releasing the claim on the vLLM server failed: %s", err)
