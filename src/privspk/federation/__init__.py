"""Federated training: client rounds (train, record spend, protect), server rounds
(collect, sum, open only the sum, FedAvg) and the in-process runtime that moves
their messages.
"""

from privspk.federation.client import ClientRelease, ClientRoundReport, ClientTraining, FederatedClient
from privspk.federation.runtime import InProcessFederation, RoundReport
from privspk.federation.server import FederatedServer

__all__ = [
    "ClientRelease",
    "ClientRoundReport",
    "ClientTraining",
    "FederatedClient",
    "FederatedServer",
    "InProcessFederation",
    "RoundReport",
]
