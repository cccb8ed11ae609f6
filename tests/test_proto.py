"""The committed generated stubs (clients/python/bbo_client/v1) match proto/bbo/v1/*.proto."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STUBS = ROOT / "clients" / "python" / "bbo_client" / "v1"


def test_generated_stubs_are_up_to_date(tmp_path):
    pytest.importorskip("grpc_tools")
    from bbo_server.protogen import generate

    files = generate(tmp_path)
    assert files, "protoc produced nothing"
    names = sorted(p.name for p in files)
    committed = sorted(p.name for p in STUBS.glob("*_pb2*.py*"))
    assert names == committed, f"stub files differ: generated {names}, committed {committed}"
    stale = [p.name for p in files if p.read_bytes() != (STUBS / p.name).read_bytes()]
    assert not stale, f"bbo_client/v1 stubs are stale ({stale}): run `make proto` and commit"


def test_service_descriptor_has_every_rpc():
    """The service's RPCs are exactly those the security tests send one request of each to."""
    from sec_helpers import RPCS

    from bbo_client.v1 import service_pb2

    methods = set(service_pb2.DESCRIPTOR.services_by_name["BboService"].methods_by_name)
    assert methods == set(RPCS)


@pytest.mark.parametrize("wire, core", [(0, 2), (5, 5), (-1, 0)])
def test_exploit_gap_zero_means_default_and_negative_means_never(wire, core):
    """proto3 cannot tell an unset int from 0, so on the wire 0 is the default and < 0 switches the
    exploitation steps off; the spec keeps the value through a round trip."""
    from bbo_client.v1 import study_pb2 as pb
    from bbo_server.convert import spec_from_pb, spec_to_pb

    s = pb.StudySpec(
        parameters=[pb.ParameterSpec(name="x", float=pb.FloatParameter(low=0, high=1))],
        objectives=[pb.Objective(name="y")],
    )
    s.algorithm.exploit_gap = wire
    spec = spec_from_pb(s)
    assert spec.algorithm.exploit_gap == core
    assert spec_from_pb(spec_to_pb(spec)).algorithm.exploit_gap == core


def test_an_objectives_declared_noise_round_trips_and_an_unknown_one_is_refused():
    """AUTO stores the JSON a study always stored; NOISY / DETERMINISTIC survive the wire and
    storage; an enum value this server does not know is a spec error naming the field."""
    from bbo.errors import SpecError
    from bbo.spec import StudySpec
    from bbo_client.v1 import study_pb2 as pb
    from bbo_server.convert import spec_from_pb, spec_to_pb

    def spec_with(noise):
        return pb.StudySpec(
            parameters=[pb.ParameterSpec(name="x", float=pb.FloatParameter(low=0, high=1))],
            objectives=[pb.Objective(name="y", noise=noise)],
        )

    assert (
        "noise" not in spec_from_pb(spec_with(pb.OBSERVATION_NOISE_AUTO)).to_dict()["objectives"][0]
    )
    for wire, core in [
        (pb.OBSERVATION_NOISE_NOISY, "noisy"),
        (pb.OBSERVATION_NOISE_DETERMINISTIC, "deterministic"),
    ]:
        spec = spec_from_pb(spec_with(wire))
        assert spec.objectives[0].noise == core
        assert StudySpec.from_dict(spec.to_dict()).objectives[0].noise == core
        assert spec_to_pb(spec).objectives[0].noise == wire
    with pytest.raises(SpecError) as e:
        spec_from_pb(spec_with(7))
    assert e.value.field == "spec.objectives[0].noise"
