"""The function a spawned process runs to call Triton's client: in a module that imports none of rnnserve's
protobuf code, which would clash with tritonclient's copy of the same KServe protos in that process."""


def triton_call(name: str, *args):
    """Runs tests/triton_calls.<name>."""
    from tests import triton_calls

    return getattr(triton_calls, name)(*args)
