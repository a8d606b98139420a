"""Salesforce's Pub/Sub API contract, as Salesforce publishes it, and the stubs generated from it.

Why a package of its own at the bottom of the layers: the daemon's Pub/Sub client and the emulator's
Pub/Sub server must speak the same wire contract without sharing any other code (so they cannot agree on
a mistake). This package holds only Salesforce's file and what `grpcio-tools` makes of it.

- `pubsub_api.proto`: copied unchanged from `forcedotcom/pub-sub-api` at commit
  `0ba470114fd8dac1e18a2c981efdafc87fcc69d1` (2024-09-03), licence CC0 1.0 Universal.
- `pubsub_api_pb2.py`, `pubsub_api_pb2.pyi`, `pubsub_api_pb2_grpc.py`: generated, never edited. Regenerate
  from the repository root with

      python -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. \\
          sfsign/pubsub_proto/pubsub_api.proto

  (`tests/unit/salesforce/test_pubsub_stubs.py` checks that the checked-in stubs are what this makes).
"""

PROTO_SOURCE = "forcedotcom/pub-sub-api@0ba470114fd8dac1e18a2c981efdafc87fcc69d1:pubsub_api.proto"
