"""One SoCD call per configuration, for a profiler (Nsight Compute) to look at.

    ncu -k regex:socd --section SpeedOfLight --section WarpStateStats python -m bench.profile_socd 64x151936 1x151936
"""
import sys

import torch

import detox_kernels

for spec in sys.argv[1:] or ["64x151936"]:
    b, v = (int(s) for s in spec.split("x"))
    g = torch.Generator().manual_seed(b * 7 + v)
    x = (torch.randn(b, v, generator=g) * 3).cuda()
    y = (x.cpu() + torch.randn(b, v, generator=g)).cuda()
    out = torch.empty_like(x)
    detox_kernels.socd(x, y, out=out, backend="cuda")
    torch.cuda.synchronize()
    print(spec, "done")
