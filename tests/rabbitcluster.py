"""A private RabbitMQ cluster for tests (Debian's rabbitmq-server, free ports, own cookie).

Never the system instance on 5672/1883: every node has its own name, ports and folder.
One node starts in ~15-35 s on the shared 2-core machine; tests share one per session.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from planty_broker.mqttserver.pki import ensure_pki
from planty_broker.mqttserver.rabbit_nodes import ClusterSpec, RabbitNode
from tests.stale import own


class PrivateRabbit:
    """`nodes` RabbitMQ nodes clustered together; `stop()` removes everything."""

    def __init__(self, nodes: int = 1) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="planty-rmq-", dir="/tmp"))
        own(self.dir)  # a run killed mid-way: the next one stops these nodes (tests/stale.py)
        self.dir.chmod(0o755)
        self.pki = ensure_pki(self.dir / "pki", ["localhost"])
        os.chmod(self.pki.key_path, 0o644)  # the node reads it; a throw-away test key
        self.crl_dir = self.dir / "crl"  # the device CA's CRL (rabbit_pki.write_crl)
        self.crl_dir.mkdir()
        self.spec = ClusterSpec.new(
            self.dir,
            nodes,
            ca_cert=self.pki.ca_cert_path,
            server_cert=self.pki.cert_path,
            server_key=self.pki.key_path,
            crl_dir=self.crl_dir,
        )
        self.spec.save()
        self.nodes = [RabbitNode(self.spec, i) for i in range(nodes)]
        try:
            for n in self.nodes:
                n.start()
            for n in self.nodes:
                n.wait_ready(240, cluster_size=nodes)
        except BaseException:
            self.stop()
            raise

    @property
    def ca_pem(self) -> str:
        return self.pki.ca_pem()

    def stop(self) -> None:
        for n in self.nodes:
            n.kill9()
        shutil.rmtree(self.dir, ignore_errors=True)
