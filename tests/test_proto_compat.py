"""proto/bbo/v1 evolves additively: nothing a released client may hold is removed, renumbered,
renamed (wire or JSON name) or retyped. The baseline (tests/data/proto_v1_baseline.json) lists
every field, enum value and RPC; the current descriptors must still hold each of them unchanged,
or else a removed field's number and name must be `reserved`. After an additive change, extend the
baseline with ``python tests/test_proto_compat.py --update`` (it only ever adds entries)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

BASELINE = Path(__file__).resolve().parent / "data" / "proto_v1_baseline.json"


def snapshot() -> dict:
    from google.protobuf import descriptor_pb2

    from bbo_client.v1 import service_pb2, study_pb2

    out: dict = {"messages": {}, "reserved": {}, "enums": {}, "rpcs": {}}
    for mod in (study_pb2, service_pb2):
        fdp = descriptor_pb2.FileDescriptorProto()
        mod.DESCRIPTOR.CopyToProto(fdp)

        def walk(messages, prefix=""):
            for m in messages:
                name = prefix + m.name
                out["messages"][name] = {
                    str(f.number): [
                        f.name,
                        f.type,
                        f.label,
                        f.type_name,
                        f.json_name or f.name,
                        m.oneof_decl[f.oneof_index].name
                        if f.HasField("oneof_index") and not f.proto3_optional
                        else "",
                    ]
                    for f in m.field
                }
                out["reserved"][name] = {
                    "numbers": [n for r in m.reserved_range for n in range(r.start, r.end)],
                    "names": list(m.reserved_name),
                }
                walk(m.nested_type, name + ".")
                for e in m.enum_type:
                    out["enums"][name + "." + e.name] = {str(v.number): v.name for v in e.value}

        walk(fdp.message_type)
        for e in fdp.enum_type:
            out["enums"][e.name] = {str(v.number): v.name for v in e.value}
        for s in fdp.service:
            for m in s.method:
                out["rpcs"][f"{s.name}.{m.name}"] = [
                    m.input_type,
                    m.output_type,
                    m.client_streaming,
                    m.server_streaming,
                ]
    return out


def breaks(old: dict, new: dict) -> list[str]:
    found = []
    for msg, fields in old["messages"].items():
        if msg not in new["messages"]:
            found.append(f"message {msg} removed")
            continue
        reserved = new["reserved"].get(msg, {"numbers": [], "names": []})
        for num, was in fields.items():
            now = new["messages"][msg].get(num)
            if now is None:
                if int(num) not in reserved["numbers"] or was[0] not in reserved["names"]:
                    found.append(
                        f'{msg}.{was[0]} (#{num}) removed without `reserved {num}; reserved "{was[0]}";`'
                    )
            elif now != was:
                found.append(f"{msg} #{num} changed: {was} -> {now}")
    for enum, values in old["enums"].items():
        for num, name in values.items():
            if new["enums"].get(enum, {}).get(num) != name:
                found.append(f"enum {enum} value {num} ({name}) removed or renamed")
    for rpc, sig in old["rpcs"].items():
        if new["rpcs"].get(rpc) != sig:
            found.append(f"rpc {rpc} removed or its signature changed")
    return found


def test_proto_v1_changes_are_additive():
    baseline = json.loads(BASELINE.read_text())
    assert not breaks(baseline, snapshot()), "\n".join(breaks(baseline, snapshot()))


def test_the_baseline_holds_every_current_entry():
    """A field added without extending the baseline would be unguarded: --update it."""
    base, cur = json.loads(BASELINE.read_text()), snapshot()
    missing = [
        f"{k}:{name}:{n}"
        for k in ("messages", "enums")
        for name, entries in cur[k].items()
        for n in entries
        if n not in base[k].get(name, {})
    ] + [r for r in cur["rpcs"] if r not in base["rpcs"]]
    assert not missing, f"not in the baseline (run --update): {missing}"


if __name__ == "__main__" and sys.argv[1:] == ["--update"]:
    cur = snapshot()
    if BASELINE.exists():
        old = json.loads(BASELINE.read_text())
        bad = breaks(old, cur)
        if bad:
            raise SystemExit("not additive, baseline left as it is:\n" + "\n".join(bad))
    BASELINE.write_text(json.dumps(cur, indent=1, sort_keys=True) + "\n")
    print(f"wrote {BASELINE}")
