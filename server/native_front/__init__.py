"""The native front end (--native-port): gRPC's C++ server carries the messages of rnnserve's services (KServe v2
and the native API), and the Python servicers answer them, unchanged.

grpc.aio spends 110–290 µs of the event loop's CPU on every message before a servicer sees it (an echo server that
does nothing, bench/peers.py), which is most of what separates a served step from onnxruntime's. front.cc reads
and writes the messages on gRPC's own C++ threads; the event loop takes every message that has arrived in one call
(its bytes, to parse as grpc.aio would), runs the same method handlers as --port, and hands back the serialized
answers (server/native_front/calls.py). The library is compiled once per source, on first use, against Debian's
libgrpc++ (build.py).
"""

from rnnserve.server.native_front.build import NativeUnavailable, library, unavailable

# NativeFront (calls.py) and PlainSteps (plain_steps.py) are imported from their modules: importing this package must
# not register the KServe protobuf types, which a process with Triton's own client (the benches) registers too.
__all__ = ["NativeUnavailable", "library", "unavailable"]
