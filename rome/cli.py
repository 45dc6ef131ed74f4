"""The `rome` command: `rome info rome-30b-a3b`, `rome init --config tiny --out DIR`,
`rome serve --model DIR`, `rome convert --checkpoint DS_DIR --model DIR --out HF_DIR`.

Bad input (unknown config, missing model dir, ...) prints one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys

from rome.errors import RomeError


def _info(args: argparse.Namespace) -> None:
    from rome.info import model_info

    print(model_info(args.name).render())


def _init(args: argparse.Namespace) -> None:
    from rome.init import init_model

    out = init_model(args.out, config=args.config, corpus=args.corpus, seed=args.seed)
    print(f"wrote {out}")


def _serve(args: argparse.Namespace) -> None:
    from rome.serving.server import serve_forever

    serve_forever(args.model, engine=args.engine, host=args.host, port=args.port, admin_token=args.admin_token)


def _convert(args: argparse.Namespace) -> None:
    from rome.convert import convert_zero_checkpoint

    out = convert_zero_checkpoint(args.checkpoint, args.model, args.out, tag=args.tag)
    print(f"wrote {out}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rome", description="ROME, the model: configs, checkpoints, serving.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("info", help="total and active parameter counts and bf16 weight memory of a config or model dir")
    s.add_argument("name", help="config name (rome-tiny, rome-30b-a3b), YAML file, or HF model dir")
    s.set_defaults(func=_info)

    s = sub.add_parser("init", help="train the tokenizer, random-init the weights, save an HF model dir")
    s.add_argument("--config", default="tiny", help="config name or YAML file (default: tiny)")
    s.add_argument("--out", required=True, help="output model dir (replaced if it exists)")
    s.add_argument("--corpus", nargs="+", help="text files to train the tokenizer on (default: built-in corpus)")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_init)

    s = sub.add_parser("serve", help="OpenAI-compatible server (chat/completions, tool calls, logprobs, token ids)")
    s.add_argument("--model", required=True, help="HF model dir")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--engine", choices=["vllm", "hf"], default="vllm")
    s.add_argument("--admin-token", help="Bearer token for POST /admin/load_weights (disabled without it)")
    s.set_defaults(func=_serve)

    s = sub.add_parser("convert", help="DeepSpeed ZeRO checkpoint -> HF safetensors model dir")
    s.add_argument("--checkpoint", required=True, help="DeepSpeed checkpoint dir (holds `latest` or global_step*)")
    s.add_argument("--model", required=True, help="HF model dir of the same architecture (config + tokenizer)")
    s.add_argument("--out", required=True, help="output HF model dir")
    s.add_argument("--tag", help="checkpoint tag (default: the one named in `latest`)")
    s.set_defaults(func=_convert)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except RomeError as e:
        print(f"rome: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
