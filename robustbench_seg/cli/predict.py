"""``rbseg predict``: colourised predictions and confidence maps for a folder of images or a split."""
from __future__ import annotations

import argparse

from .common import add_device_arg, console, finish_command, print_json


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "predict", help="write VOC-palette predictions (and confidence maps) for images or a split",
        description="Predict every image of --images DIR (or of a split of --data ROOT) at full resolution. "
                    "Writes OUT/pred/<name>.png (VOC palette) and, with --confidence, OUT/confidence/<name>.png "
                    "(max softmax probability, jet colormap; binding models also get confidence-dominant/ and "
                    "confidence-phantom/). --voc-submission writes the labels to "
                    "OUT/results/VOC2012/Segmentation/comp6_test_cls/<id>.png, the VOC server's layout. For the "
                    "mIoU of a split with ground truth (e.g. SynthVOC's out-of-context 'ooc' split) use "
                    "rbseg evaluate --split ooc.",
    )
    p.add_argument("--model", required=True, metavar="NAME|CKPT|MODULE:FUNCTION", help="model to run")
    p.add_argument("--weights", default=None, metavar="PATH", help="state dict for a module:function model")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", metavar="DIR", help="a folder of images (jpg, png, ...)")
    src.add_argument("--data", metavar="ROOT", help="a VOC2012/ tree: predict the images of --split")
    p.add_argument("--split", default=None,
                   help="split of --data to predict (default: test with --voc-submission, else val)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--confidence", action="store_true", help="also write confidence maps (jet colormap)")
    p.add_argument("--voc-submission", action="store_true",
                   help="write labels as results/VOC2012/Segmentation/comp6_test_cls/<id>.png under --out")
    p.add_argument("--batch-size", type=int, default=8, metavar="N", help="same-size images per batch (default: 8)")
    add_device_arg(p)
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"],
                   help="auto: bf16 autocast on CUDA, fp32 on CPU")
    p.add_argument("--workers", type=int, default=None, metavar="N", help="image-decoding workers")
    finish_command(p, run)


def run(args: argparse.Namespace) -> int:
    from ..evaluation.predict import folder_images, predict_images, split_images

    if args.images:
        if args.split:
            from ..errors import RbsegError

            raise RbsegError("--split applies to --data, not --images")
        paths = folder_images(args.images)
    else:
        paths = split_images(args.data, args.split or ("test" if args.voc_submission else "val"))
    summary = predict_images(
        args.model, paths, args.out, confidence=args.confidence, voc_submission=args.voc_submission,
        batch_size=args.batch_size, device=args.device, dtype=args.dtype, weights=args.weights,
        num_workers=args.workers, progress=not args.json,
    )
    if args.json:
        print_json(summary.to_dict())
        return 0
    console.print(f"{summary.model['name']}: {summary.n_images} prediction(s) in {summary.label_dir}")
    for folder in summary.confidence_dirs:
        console.print(f"confidence maps in {folder}")
    return 0
