"""`python -m ddpm.hub pull | push | deploy-space`: the Hub from the command line.

    python -m ddpm.hub pull user/ddpm-fashion[@REV]
    python -m ddpm.hub push checkpoints/fashion-mnist user/ddpm-fashion [--private] [--revision BRANCH]
    python -m ddpm.hub deploy-space user/ddpm-studio --model user/ddpm-fashion[@REV] [--private]

`push` first brings the folder's model card up to date for the repo it goes to (ddpm.card.prepare_for_hub: the
usage lines name the repo; a README.md written by hand is kept as it is) and draws samples.png if missing or stale.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ..card import prepare_for_hub
from . import (
    PROJECT_ROOT,
    HubError,
    deploy_space,
    looks_like_hub_id,
    push_checkpoint,
    resolve_checkpoint,
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ddpm.hub", description="Hugging Face Hub: pull, push, deploy.")
    sub = p.add_subparsers(dest="command", required=True)
    pull = sub.add_parser("pull", help="download a checkpoint into the cache and print its folder")
    pull.add_argument("source", help="user/repo[@revision]")
    push = sub.add_parser("push", help="upload a checkpoint folder with a model card")
    push.add_argument("checkpoint", help="checkpoint folder (config.json + model.safetensors)")
    push.add_argument("repo", help="user/repo")
    push.add_argument("--private", action="store_true", help="create the repo private")
    push.add_argument("--revision", default=None, help="branch to push to (created from main if needed)")
    push.add_argument("--message", default=None, help="commit message")
    deploy = sub.add_parser("deploy-space", help="create or update a Gradio Space running the app")
    deploy.add_argument("space", help="user/space")
    deploy.add_argument("--model", required=True, help="the checkpoint the Space shows: user/repo[@revision]")
    deploy.add_argument("--private", action="store_true", help="create the Space private")
    deploy.add_argument("--root", default=str(PROJECT_ROOT), help="the project folder holding app.py")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        if args.command == "pull":
            if not looks_like_hub_id(args.source):
                raise ValueError(f"{args.source!r} is not a Hub id user/repo[@revision]")
            print(resolve_checkpoint(args.source))
        elif args.command == "push":
            prepare_for_hub(args.checkpoint, args.repo)
            url = push_checkpoint(args.checkpoint, args.repo, private=args.private, revision=args.revision,
                                  commit_message=args.message)
            print(f"pushed {args.checkpoint} to {args.repo}: {url}")
        else:
            url = deploy_space(args.space, model=args.model, root=args.root, private=args.private)
            print(f"deployed the Space {args.space} showing {args.model}: {url}")
    except (ValueError, HubError) as e:  # CheckpointError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
