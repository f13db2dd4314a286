"""Upload a model folder to the Hugging Face Hub.

    python -m train.push_to_hub --model DIR --repo-id USER/NAME [--private] [--dry-run]

The token comes from the environment (HF_TOKEN) or a previous `huggingface-cli login`.
--dry-run lists what would be uploaded and touches nothing. Once pushed, the model loads
with Predictor.from_pretrained("USER/NAME") and timm.create_model("hf-hub:USER/NAME",
pretrained=True).
"""
from __future__ import annotations

import argparse
import fnmatch
import sys
from pathlib import Path

from huggingface_hub import HfApi, get_token
from huggingface_hub import constants as hub_constants

from skinlesion.models.hub import HUB_FILES, hub_reachable, looks_like_repo_id
from skinlesion.models.spec import ModelFolderError, read_spec


def files_to_upload(folder: Path) -> list[Path]:
    """The model folder's files, with its ensemble members' (members/<name>/), hidden ones left out."""
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
                  and any(fnmatch.fnmatch(p.name, pattern) for pattern in HUB_FILES))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.push_to_hub", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="model folder")
    p.add_argument("--repo-id", required=True, help="USER/NAME on the Hub")
    p.add_argument("--private", action="store_true")
    p.add_argument("--dry-run", action="store_true", help="list what would be uploaded, upload nothing")
    p.add_argument("--message", default="Upload skinlesion model folder")
    args = p.parse_args(argv)

    try:
        read_spec(args.model)
    except ModelFolderError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not looks_like_repo_id(args.repo_id):
        print(f"error: --repo-id must be USER/NAME, not {args.repo_id!r}", file=sys.stderr)
        return 2
    files = [f.relative_to(args.model).as_posix() for f in files_to_upload(args.model)]
    print(f"{'would upload' if args.dry_run else 'uploading'} to {hub_constants.ENDPOINT}/{args.repo_id}:")
    for f in files:
        print(f"  {f:<40} {(args.model / f).stat().st_size / 1e6:8.2f} MB")
    if args.dry_run:
        return 0

    token = get_token()
    if not token:
        print("error: no Hugging Face token: set HF_TOKEN to a write token "
              "(https://huggingface.co/settings/tokens) or run `huggingface-cli login`", file=sys.stderr)
        return 2
    if not hub_reachable():
        print(f"error: the Hugging Face Hub ({hub_constants.ENDPOINT}) cannot be reached from this machine "
              f"(offline, HF_HUB_OFFLINE set, or no route); nothing was uploaded", file=sys.stderr)
        return 3
    try:
        api = HfApi(token=token)
        api.create_repo(args.repo_id, private=args.private, exist_ok=True)
        commit = api.upload_folder(folder_path=args.model, repo_id=args.repo_id, commit_message=args.message,
                                   allow_patterns=files)
    except Exception as error:  # HTTP errors, auth, network: the message says which
        print(f"error: upload to {args.repo_id} failed: {type(error).__name__}: {error}", file=sys.stderr)
        return 3
    print(f"done: {commit.commit_url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
