"""A core server whose GetDataset takes SLOW_SECONDS, for drain-on-SIGTERM tests. Prints its port."""

import os
import sys
import time

from constellation.core.v1 import core_pb2
from core_svc.servicer import CoreServicer
from mesh import config, logs
from mesh.server import MeshServer
from mesh.services import registration


class SlowServicer(CoreServicer):
    def GetDataset(self, request, context):
        time.sleep(float(os.environ.get("SLOW_SECONDS", "1.5")))
        return core_pb2.Dataset(id=request.id, name="slow")


settings = config.load("core")
logs.configure("core", "INFO")
server = MeshServer(settings, [registration("core", SlowServicer(None, None, None))])
original_start = server.start


def start() -> int:
    port = original_start()
    print(port, flush=True)
    return port


server.start = start
server.serve_forever()
sys.exit(0)
