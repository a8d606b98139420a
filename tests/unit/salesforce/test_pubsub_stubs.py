"""The Pub/Sub stubs in the repository are exactly what grpcio-tools makes of Salesforce's proto, and the
proto is Salesforce's file unchanged (its service and messages as the published contract names them)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from sfsign.pubsub_proto import pubsub_api_pb2 as pb

ROOT = Path(__file__).resolve().parents[3]
PACKAGE = ROOT / "sfsign" / "pubsub_proto"
GENERATED = ("pubsub_api_pb2.py", "pubsub_api_pb2.pyi", "pubsub_api_pb2_grpc.py")

#: Where the generator writes its own version (a newer grpcio-tools patch release changes only these): the
#: comparison is of what the stubs say about the contract, not of which release wrote them.
_VERSION_SPOTS = (
    (re.compile(r"GRPC_GENERATED_VERSION = '[^']*'"), "GRPC_GENERATED_VERSION = '*'"),
    (re.compile(r"# Protobuf Python Version: .*"), "# Protobuf Python Version: *"),
    (re.compile(r"ValidateProtobufRuntimeVersion\([^)]*\)", re.S), "ValidateProtobufRuntimeVersion(*)"),
)


def _contract(text: str) -> str:
    for pattern, placeholder in _VERSION_SPOTS:
        text = pattern.sub(placeholder, text)
    return text


def test_checked_in_stubs_are_what_grpcio_tools_generates(tmp_path: Path) -> None:
    target = tmp_path / "sfsign" / "pubsub_proto"
    target.mkdir(parents=True)
    shutil.copy(PACKAGE / "pubsub_api.proto", target)
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I", ".", "--python_out=.", "--pyi_out=.",
         "--grpc_python_out=.", "sfsign/pubsub_proto/pubsub_api.proto"],
        cwd=tmp_path, check=True,
    )
    for name in GENERATED:
        generated, checked_in = (target / name).read_text(), (PACKAGE / name).read_text()
        assert _contract(generated) == _contract(checked_in), f"{name} is stale: regenerate it"


def test_the_proto_is_salesforces_eventbus_v1_contract() -> None:
    service = pb.DESCRIPTOR.services_by_name["PubSub"]
    assert service.full_name == "eventbus.v1.PubSub"
    assert {m.name for m in service.methods} == {
        "Subscribe", "GetSchema", "GetTopic", "Publish", "PublishStream", "ManagedSubscribe"}
    fetch = pb.FetchRequest.DESCRIPTOR.fields_by_name
    assert [(f, fetch[f].number) for f in ("topic_name", "replay_preset", "replay_id", "num_requested",
                                           "auth_refresh")] == [
        ("topic_name", 1), ("replay_preset", 2), ("replay_id", 3), ("num_requested", 4), ("auth_refresh", 5)]
    assert pb.ReplayPreset.Value("LATEST") == 0 and pb.ReplayPreset.Value("CUSTOM") == 2
