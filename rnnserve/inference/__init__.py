"""Generated from protos/rnnserve/inference/ by scripts/gen_protos.sh: the KServe v2 / Triton gRPC API."""
