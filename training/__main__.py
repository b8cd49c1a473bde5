"""``python -m training train MODEL --data ../shared/data --out runs/MODEL [--steps N]``"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from .train import train


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train one bundled model's recipe")
    p.add_argument("model", choices=["verdiff-mr", "verdiff-ct", "verdiff-xray"])
    p.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--crop", type=int, default=160)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=35)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: PyTorch's default)")
    p.add_argument("--limit", type=int, default=None, help="train on the first N training subjects only (tests)")
    p.add_argument("--init", type=Path, default=None, help="start from these weights (continue an earlier stage)")
    e = sub.add_parser("export", help="copy a run's weights into Resources/Models with a validated model card")
    e.add_argument("model", choices=["verdiff-mr", "verdiff-ct", "verdiff-xray"])
    e.add_argument("--run", type=Path, required=True)
    e.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data")
    e.add_argument("--models-dir", type=Path, default=Path(__file__).resolve().parents[1] / "Resources" / "Models")
    e.add_argument("--steps", type=int, default=5)
    e.add_argument("--ensemble", type=int, default=3)
    args = parser.parse_args(argv)
    if args.command == "export":
        from .evaluate import export

        card = export(args.model, args.run, args.models_dir, args.data, args.steps, args.ensemble, (8, 16, 32, 64))
        print(json.dumps(card["validation"], indent=1))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python -m training " + " ".join(argv if argv is not None else sys.argv[1:])
    (args.out / "command.txt").write_text(command + "\n")
    path = train(args.model, args.data, args.out, args.steps, args.batch_size, args.crop, args.lr, args.seed, device=device, limit=args.limit, init=args.init)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
