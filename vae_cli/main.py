"""`vae SUBCOMMAND ...`: dispatches to the package that owns the subcommand, imported lazily.

A serving-only install has no torch: `vae serve` and `vae client` must not import the trainer.
Each target is "module:function"; the function takes the remaining argv and returns an exit code.
"""

from __future__ import annotations

import importlib
import sys

__all__ = ["COMMANDS", "main"]

# name -> (module:function, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("trainer.cli:train_main", "train a VAE on images; writes a run folder"),
    "evaluate": ("trainer.cli:evaluate_main", "test ELBO, IWAE NLL, active units of a checkpoint"),
    "export": ("exporter.cli:export_main", "checkpoint -> verified encoder/decoder ONNX + manifest"),
    "verify": ("exporter.cli:verify_main", "re-check an exported model folder"),
    "serve": ("service.cli:serve_main", "serve a model folder over gRPC with Prometheus metrics"),
    "health": ("client.cli:health_main", "gRPC health check of a server (exit 0 when SERVING)"),
    "client": ("client.cli:client_main", "call a server: info, encode, decode, sample, score, edit, ..."),
    "generate": ("client.jobs_cli:generate_main", "sharded, resumable sample generation job"),
    "encode": ("client.jobs_cli:encode_main", "sharded, resumable dataset encoding job"),
    "score": ("client.score_cli:score_main", "sharded, resumable scoring job: ELBO per image, histogram"),
}


def _usage() -> str:
    lines = ["usage: vae COMMAND [ARGS...]", "", "commands:"]
    width = max(len(n) for n in COMMANDS)
    for name, (_, help_text) in COMMANDS.items():
        lines.append(f"  {name.ljust(width)}  {help_text}")
    lines.append("")
    lines.append("`vae COMMAND --help` for a command's options.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"vae: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, func_name = COMMANDS[name][0].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:  # e.g. `vae train` on a serving-only install
        print(f"vae {name}: needs a package that is not installed ({exc.name}); "
              f"install the matching extra, e.g. pip install 'vae-serve[train]'", file=sys.stderr)
        return 2
    code = getattr(module, func_name)(rest)
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
