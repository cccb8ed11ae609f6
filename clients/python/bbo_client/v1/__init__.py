"""Generated protobuf / gRPC modules of the bbo v1 API (``make proto`` regenerates them from
proto/bbo/v1/*.proto; do not edit by hand)."""
