"""`python -m triton_repo.openai_front --grpc-url H:P --engine-dir DIR --port P`: run the front in the foreground."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m triton_repo.openai_front", description=__doc__)
    ap.add_argument("--grpc-url", required=True, help="tritonserver gRPC endpoint, host:port")
    ap.add_argument(
        "--engine-dir", required=True, type=Path, help="engine dir (tokenizer, chat template, name)"
    )
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9000)
    ap.add_argument("--triton-model", default="nemotron")
    ap.add_argument(
        "--model-id",
        action="append",
        default=[],
        help="served model id (repeatable; default: nemotron and the engine's own name)",
    )
    args = ap.parse_args(argv)
    import uvicorn

    from triton_repo.openai_front.app import FrontConfig, create_app

    try:
        app = create_app(FrontConfig(args.grpc_url, args.engine_dir, args.triton_model, tuple(args.model_id)))
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
