"""DPN inference speed on the CPU, next to the model's FLOPs and what this machine's matrix
multiply rate would allow.

    python benchmarks/dpn_inference.py [--size 352] [--width 1.0] [--variant deb+bl] [--batch 1]
                                       [--iters N] [--threads T] [--mm-size 2048] [--no-vgg]
                                       [--checkpoint pretrained --hw 480x640]

With ``--checkpoint`` (a file, or ``pretrained``: the shipped DPN) the model is that checkpoint's
(its own config and weights) on a ``--hw`` input (default ``--size`` square), and a third figure
is timed: the pre-labeller's path (``blurset.model.apply.predict_maps`` on one ``--hw`` uint8 RGB
photo: resize to the checkpoint's input size, predict, resize the map back), reported as
``prelabel_img_s``. ``python benchmarks/dpn_inference.py --checkpoint pretrained --hw 480x640
--no-vgg`` is the shipped model's claim (docs/pretrained.md).

Builds ``blurset.model.dpn.build_dpn(DPNConfig(variant, width))`` (random weights: speed does not depend
on them, and nothing is downloaded), in eval mode, and times ``DPN.predict`` on a seeded
``(batch, 3, size, size)`` RGB tensor in ``[0, 1]`` under ``torch.inference_mode``, float32, with
``--threads`` torch threads (default: every core this process may run on). Measured in the same
run, in ``--iters`` interleaved rounds after one warm-up call of each:

- DPN: one ``predict`` call per round → images/s; FLOPs per image from ``count_flops`` (2 per
  multiply-accumulate of convolutions; pooling, interpolation and elementwise ops not counted),
  so achieved GFLOP/s = FLOPs per image × images/s;
- matmul: ``--mm-reps`` float32 ``torch.mm`` of two ``--mm-size``² matrices per round, 2·n³
  FLOPs each → the machine's dense GFLOP/s at these threads;
- VGG-16: torchvision's VGG-16 ``features`` (``make_layers(cfgs["D"])``, i.e. ``vgg16().features``
  with pool5, scaled by ``--width`` like the DPN backbone) on the same input, one call per round:
  a conv-only reference, and its share of the DPN's time (skip with ``--no-vgg``).

Every figure is the best round (the cores may be shared, so the best is the least disturbed);
medians are printed beside them. The bound is the images/s the matmul rate would allow at the
model's FLOPs, ``bound = matmul GFLOP/s / (FLOPs per image / 1e9)``, and ``ratio`` = measured /
bound, the fraction of the machine's matmul rate the model reaches. The two best rounds need
not be the same round, so ``round_ratio`` is also given: each round's DPN GFLOP/s over that
round's matmul GFLOP/s (both under the same load), median over rounds. With other work on the
cores, more threads than free cores can slow small convolutions far more than the large matmul
(every kernel waits for its slowest thread); compare ``--threads 1``. The last line is
machine-readable: ``RESULT img_s=… median_img_s=… gflops_per_img=… achieved_gflop_s=…
matmul_gflop_s=… bound_img_s=… ratio=… round_ratio=… vgg_img_s=… vgg_ratio=… vgg_share=…
params_m=… threads=…`` (the ``vgg_*`` keys are absent with ``--no-vgg``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence


def all_cores() -> int:
    """How many CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=352, help="input side (multiple of 16)")
    parser.add_argument("--width", type=float, default=1.0, help="DPN channel multiplier")
    parser.add_argument("--variant", default="deb+bl", help="DPN merge variant")
    parser.add_argument("--batch", type=int, default=1, help="images per predict call")
    parser.add_argument("--iters", type=int, default=5, help="timed rounds")
    parser.add_argument("--threads", type=int, default=all_cores(),
                        help="torch threads (default: all cores)")
    parser.add_argument("--mm-size", type=int, default=2048, help="side of the matmul operands")
    parser.add_argument("--mm-reps", type=int, default=3, help="torch.mm calls per round")
    parser.add_argument("--no-vgg", action="store_true", help="skip the VGG-16 reference")
    parser.add_argument("--checkpoint", help="time this checkpoint's DPN (a file or 'pretrained')")
    parser.add_argument("--hw", help="input HEIGHTxWIDTH (e.g. 480x640; default --size square)")
    args = parser.parse_args(argv)
    for name in ("batch", "iters", "threads", "mm_size", "mm_reps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")

    import torch
    from torchvision.models.vgg import cfgs, make_layers

    from blurset.model.dpn import SIZE_MULTIPLE, DPNConfig, build_dpn, count_flops

    if args.size % SIZE_MULTIPLE:
        parser.error(f"--size must be a multiple of {SIZE_MULTIPLE}, got {args.size}")
    height = width = args.size
    if args.hw:
        try:
            height, width = (int(v) for v in args.hw.lower().split("x"))
        except ValueError:
            parser.error(f"--hw must be HEIGHTxWIDTH (e.g. 480x640), got {args.hw!r}")
        if height % 32 or width % 32:
            parser.error(f"--hw sides must be multiples of 32, got {args.hw}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    input_size = None
    if args.checkpoint:
        from blurset.model.checkpoint import load_checkpoint

        model, meta = load_checkpoint(args.checkpoint)
        config = model.config
        input_size = int(meta["config"]["input_size"])
    else:
        try:
            config = DPNConfig(variant=args.variant, width=args.width)
        except (TypeError, ValueError) as exc:
            parser.error(str(exc))
        model = build_dpn(config).eval()
    params_m = sum(p.numel() for p in model.parameters()) / 1e6
    # conv FLOPs scale with the pixel count: count on 32² (every level 1×1 or more), rescale
    flops_img = count_flops(model, 32) * height * width // (32 * 32)
    x = torch.rand(args.batch, 3, height, width)
    a = torch.randn(args.mm_size, args.mm_size)
    b = torch.randn(args.mm_size, args.mm_size)

    def matmul() -> None:
        for _ in range(args.mm_reps):
            torch.mm(a, b)

    fns: dict[str, Callable[[], object]] = {"dpn": lambda: model.predict(x), "matmul": matmul}
    if input_size is not None:
        import numpy as np

        from blurset.model.apply import predict_maps

        photo = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
        fns["prelabel"] = lambda: predict_maps(model, [photo], input_size=input_size)
    vgg_flops_img = 0
    if not args.no_vgg:
        cfg = [v if v == "M" else max(1, round(int(v) * args.width)) for v in cfgs["D"]]
        vgg = make_layers(cfg, batch_norm=False).eval()  # == vgg16().features at width 1
        vgg_flops_img = count_flops(vgg, 32) * height * width // (32 * 32)
        fns["vgg"] = lambda: vgg(x)

    times: dict[str, list[float]] = {name: [] for name in fns}
    with torch.inference_mode():
        for fn in fns.values():  # warm-up: allocator, oneDNN primitives, thread pool
            fn()
        for _ in range(args.iters):
            for name, fn in fns.items():
                times[name].append(timed(fn))

    best = {name: min(ts) for name, ts in times.items()}
    median = {name: statistics.median(ts) for name, ts in times.items()}
    img_s, median_img_s = args.batch / best["dpn"], args.batch / median["dpn"]
    gflops_img = flops_img / 1e9
    achieved = gflops_img * img_s
    mm_gflop = 2 * args.mm_size**3 * args.mm_reps / 1e9
    mm_rate, mm_median = mm_gflop / best["matmul"], mm_gflop / median["matmul"]
    bound = mm_rate / gflops_img
    ratio = img_s / bound
    # the same ratio within each round (DPN and matmul under the same load), then its median
    round_ratio = statistics.median(
        (args.batch * gflops_img / t_dpn) / (mm_gflop / t_mm)
        for t_dpn, t_mm in zip(times["dpn"], times["matmul"], strict=True)
    )

    threads = torch.get_num_threads()
    print(f"DPN {config.variant} {config.backbone} width={config.width:g} ({params_m:.2f} M "
          f"params){' from ' + args.checkpoint if args.checkpoint else ''}, "
          f"{args.batch}×3×{height}×{width} float32, torch {torch.__version__}, "
          f"{threads} thread(s) of {all_cores()} core(s); best / median of {args.iters} "
          f"interleaved rounds")
    print(f"{'':<22}{'img/s':>10}{'ms/img':>10}{'GFLOP/img':>11}{'GFLOP/s':>10}"
          f"{'of matmul':>11}{'median img/s':>14}")

    def row(label: str, key: str, gflop: float) -> tuple[float, float]:
        rate = args.batch / best[key]
        print(f"{label:<22}{rate:>10.3f}{1e3 / rate:>10.1f}{gflop:>11.2f}{gflop * rate:>10.1f}"
              f"{gflop * rate / mm_rate:>10.1%}{args.batch / median[key]:>14.3f}")
        return rate, gflop * rate / mm_rate

    row("DPN predict", "dpn", gflops_img)
    vgg_result = ""
    if "prelabel" in fns:
        pre_img_s = 1 / min(times["prelabel"])
        print(f"pre-label path (one {height}×{width} photo at input {input_size}): "
              f"{pre_img_s:.3f} img/s best, {1 / statistics.median(times['prelabel']):.3f} median")
        vgg_result += f" prelabel_img_s={pre_img_s:.3f}"
    if "vgg" in fns:
        vgg_img_s, vgg_ratio = row("VGG-16 features only", "vgg", vgg_flops_img / 1e9)
        share = best["vgg"] / best["dpn"]
        print(f"VGG-16 features: {vgg_flops_img / flops_img:.0%} of the DPN's FLOPs, "
              f"{share:.0%} of its time (best rounds)")
        vgg_result = f" vgg_img_s={vgg_img_s:.3f} vgg_ratio={vgg_ratio:.3f} vgg_share={share:.3f}"
    print(f"matmul {args.mm_size}² float32 ×{args.mm_reps}: {mm_rate:.1f} GFLOP/s best, "
          f"{mm_median:.1f} median")
    print(f"bound at the matmul rate: {bound:.3f} img/s; measured {img_s:.3f} img/s = "
          f"{ratio:.1%} of it (best rounds); median over rounds of each round's own ratio: "
          f"{round_ratio:.1%}")
    print(f"RESULT img_s={img_s:.3f} median_img_s={median_img_s:.3f} "
          f"gflops_per_img={gflops_img:.2f} achieved_gflop_s={achieved:.1f} "
          f"matmul_gflop_s={mm_rate:.1f} bound_img_s={bound:.3f} ratio={ratio:.3f} "
          f"round_ratio={round_ratio:.3f}{vgg_result} params_m={params_m:.2f} threads={threads}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
