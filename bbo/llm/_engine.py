"""The local LLM engine process: llama.cpp's OpenAI-compatible server (``xllamacpp``) on one GGUF.

Started by :class:`bbo.llm.local.LocalEngine` as ``python <this file> --model PATH ...``, run as a
file so that it imports neither bbo nor torch. It listens on 127.0.0.1 only, requires the bearer key
given in the environment variable ``BBO_LOCAL_ENGINE_KEY`` (not on the command line, which other
users of the machine can read), prints one JSON line ``{"address": ...}`` once it serves, and exits
when its standard input closes (the parent stopped it, or died) or on SIGTERM / SIGINT.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading


def _params(args):
    import xllamacpp as xlc

    p = xlc.CommonParams()
    p.model.path = args.model
    p.model_alias = {args.alias}
    p.hostnames = ["127.0.0.1"]
    p.port = args.port
    key = os.environ.get("BBO_LOCAL_ENGINE_KEY", "")
    if key:
        p.api_keys = [key]
    # One slot per concurrent request: each gets n_ctx / n_parallel tokens of context.
    p.n_parallel = args.parallel
    p.n_ctx = args.ctx * args.parallel
    # Threads on purpose: on a 2-core machine two spinning pools collapse throughput ~10x, so one
    # compute thread by default, and no busy-polling between tokens.
    for cpu in (p.cpuparams, p.cpuparams_batch):
        cpu.n_threads = args.threads
        cpu.poll = 0
    p.n_threads_http = 2
    p.cache_ram_mib = 64  # prompt cache in RAM (llama.cpp's default is 8 GiB)
    p.ui = False
    p.endpoint_metrics = False
    p.verbosity = 1 if not args.verbose else 3
    return p


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="GGUF file")
    ap.add_argument("--alias", required=True, help="the model name the server answers to")
    ap.add_argument("--port", type=int, default=0, help="0 = a free one")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--parallel", type=int, default=2, help="concurrent requests (slots)")
    ap.add_argument("--ctx", type=int, default=4096, help="context tokens per slot")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)
    import xllamacpp as xlc

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        server = xlc.Server(_params(args))  # loads the model, binds, serves on threads of its own
    except RuntimeError as e:  # llama.cpp logged why on stderr (verbosity 1: errors)
        print(json.dumps({"error": str(e)}), flush=True)
        return 2
    print(json.dumps({"address": server.listening_address, "pid": os.getpid()}), flush=True)

    def watch_stdin():
        try:
            while sys.stdin.buffer.read(4096):
                pass
        except (OSError, ValueError):
            pass
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    while not stop.wait(0.5):
        pass
    del server  # stops the HTTP server and frees the model
    return 0


if __name__ == "__main__":
    sys.exit(main())
