"""Python SDK for Constellation: typed stubs for every service behind one gateway address.

from constellation_sdk import Client, core_pb2

with Client("localhost:8080") as client:
    dataset = client.core.CreateDataset(core_pb2.CreateDatasetRequest(dataset=core_pb2.Dataset(
        name="olinda", uri="file:///data/L7_ETMs.tif", bands=["blue", "green", "red", "nir", "swir1", "swir2"])))
"""

from constellation.agent.v1 import agent_pb2
from constellation.common.v1 import common_pb2
from constellation.core.v1 import core_pb2, identity_pb2
from constellation.hosting.v1 import hosting_pb2
from constellation.orchestrator.v1 import orchestrator_pb2
from constellation_sdk.client import Client

__all__ = ["Client", "agent_pb2", "common_pb2", "core_pb2", "hosting_pb2", "identity_pb2", "orchestrator_pb2"]
