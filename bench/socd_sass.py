"""Static analysis of the SoCD CUDA kernels, no GPU needed.

Compiles ``csrc/cuda/socd_cuda.cu`` with nvcc (the flags of setup.py, ``-lineinfo``) to one cubin
per architecture (sm_90 and sm_80), disassembles it with ``nvdisasm -gi`` (SASS with the source
line of every instruction and its inlining chain) and reports for every kernel:

- registers, static shared memory and stack (``cuobjdump -res-usage``);
- the total static instruction count;
- every loop (a backward branch: the body is [branch target, branch]), named by the pass of the
  kernel source it belongs to (the ``// ---- <name>`` section comments of ``socd_kernel.cuh``),
  with its static instruction count, the global / shared loads and stores in it and, for the
  loops over the row, the instructions per row element (a single-CTA / cluster loop iteration
  covers ``U * VE`` elements per thread: the kernels' slots in flight times elements per slot).

The same analysis runs on a second source tree (``--before REV``, default the commit named
below: the kernel before the serving-grade changes), extracted with ``git archive``, so that the
table shows BEFORE and AFTER side by side. JSON goes to ``bench/results/socd-sass.json``.

    python -m bench.socd_sass                 # before (b4ffa4d) and after (working tree)
    python -m bench.socd_sass --before none   # the working tree only
    python -m bench.socd_sass --arch 90       # one architecture
    python -m bench.socd_sass --no-triton     # CUDA only (the Triton kernel is compiled offline too)

Needs nvcc and nvdisasm / cuobjdump (from the CUDA toolkit, or the copies Triton ships).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BEFORE = "b4ffa4d"
KERNEL_SRC = "csrc/cuda/socd_kernel.cuh"
NVCC_FLAGS = [
    "-std=c++17", "-O3", "-DDETOX_WITH_CUDA", "--expt-relaxed-constexpr", "-lineinfo",
    "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__", "-Xcompiler", "-fPIC",
]


def find_tool(name: str) -> str:
    cands = [os.environ.get(name.upper())]
    cands += [shutil.which(name)]
    for d in (os.environ.get("CUDA_HOME"), "/usr/local/cuda", "/usr/local/cuda-13.0"):
        if d:
            cands.append(os.path.join(d, "bin", name))
    try:
        import triton  # the NVIDIA backend ships cuobjdump and nvdisasm

        cands.append(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name))
    except Exception:  # pragma: no cover
        pass
    for c in cands:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    raise SystemExit(f"socd_sass: {name} not found (set {name.upper()} or CUDA_HOME)")


# ---------------------------------------------------------------- source sections
def sections(src_text: str) -> list[tuple[int, str | None]]:
    """(line, name) boundaries: a ``// ---- name`` comment opens a section, a function definition
    (``SOCD_DEV``) closes it (name None). Lines are 1-based."""
    out = []
    for i, line in enumerate(src_text.splitlines(), 1):
        m = re.search(r"//\s*-{4} ([A-Za-z].*)", line)
        if m:
            name = m.group(1).strip()
            name = re.sub(r"[:(].*", "", name).strip()
            out.append((i, name))
        elif re.match(r"\s*(template\s*<.*>\s*)?SOCD_DEV\b", line) and "(" in line:
            out.append((i, None))
    return out


def section_of(line: int, bounds: list[tuple[int, str | None]]) -> str | None:
    name = None
    for ln, nm in bounds:
        if ln > line:
            break
        name = nm
    return name


# ---------------------------------------------------------------- SASS parsing
FUNC_RE = re.compile(r"^\.text\.(\S+):")
INSTR_RE = re.compile(r"^\s+/\*([0-9a-f]{4,})\*/\s+(.*?);")
LABEL_RE = re.compile(r"^(\.L_x_\d+):")
LINE_RE = re.compile(r'line (\d+)')


def parse_sass(text: str, kernel_file: str) -> dict[str, dict]:
    """Per function: instructions [(addr, text, [source lines of the inlining chain])], labels."""
    funcs: dict[str, dict] = {}
    cur = None
    chain: list[int] = []
    pending_labels: list[str] = []
    for raw in text.splitlines():
        m = FUNC_RE.match(raw)
        if m:
            cur = {"instr": [], "labels": {}}
            funcs[m.group(1)] = cur
            chain = []
            pending_labels = []
            continue
        if cur is None:
            continue
        if raw.lstrip().startswith("//## File"):
            # 'File "<f>", line N inlined at "<f>", line M' -- keep the kernel source's lines
            parts = raw.split("inlined at")
            lines = []
            for p in parts:
                if kernel_file in p:
                    mm = LINE_RE.search(p)
                    if mm:
                        lines.append(int(mm.group(1)))
            chain = chain + [ln for ln in lines if ln not in chain]  # one //## line per inlining level
            continue
        m = LABEL_RE.match(raw)
        if m:
            pending_labels.append(m.group(1))
            continue
        m = INSTR_RE.match(raw)
        if m:
            addr = int(m.group(1), 16)
            for lb in pending_labels:
                cur["labels"][lb] = addr
            pending_labels = []
            cur["instr"].append((addr, m.group(2).strip(), chain))
            chain = []
    return funcs


def opcode(text: str) -> str:
    t = re.sub(r"^@!?U?P[T0-9]+\s+", "", text)
    return t.split()[0] if t else ""


def loops_of(fn: dict, bounds) -> list[dict]:
    instr = fn["instr"]
    index = {a: i for i, (a, _, _) in enumerate(instr)}
    loops = []
    for i, (addr, text, _) in enumerate(instr):
        op = opcode(text)
        if op != "BRA":
            continue
        m = re.search(r"`\((\.L_x_\d+)\)", text)
        if not m or m.group(1) not in fn["labels"]:
            continue
        tgt = fn["labels"][m.group(1)]
        if tgt > addr:
            continue
        body = instr[index[tgt] : i + 1]
        names = Counter()
        for _, _, ch in body:
            nm = None
            for ln in ch:  # innermost first: the first line that lies in a named section
                nm = section_of(ln, bounds)
                if nm:
                    break
            if nm:
                names[nm] += 1
        ops = Counter(opcode(t) for _, t, _ in body)
        loops.append(
            {
                "start": f"{tgt:#06x}",
                "end": f"{addr:#06x}",
                "instructions": len(body),
                "pass": names.most_common(1)[0][0] if names else "?",
                "global_loads": sum(v for k, v in ops.items() if k.startswith("LDG")),
                "global_stores": sum(v for k, v in ops.items() if k.startswith("STG")),
                "shared_loads": sum(v for k, v in ops.items() if k.startswith("LDS")),
                "shared_atomics": sum(v for k, v in ops.items() if k.startswith("ATOMS")),
                "barriers": sum(v for k, v in ops.items() if k.startswith("BAR")),
                "exp_mufu": sum(1 for _, t, _ in body if "MUFU.EX2" in t),
                "log_mufu": sum(1 for _, t, _ in body if "MUFU.LG2" in t),
            }
        )
    # outermost loops only that are not contained in a larger one with the same pass? keep all,
    # marking nesting depth
    def inside(o, lp):
        return o is not lp and int(lp["start"], 16) <= int(o["start"], 16) and int(o["end"], 16) <= int(lp["end"], 16)

    for lp in loops:
        lp["depth"] = sum(1 for o in loops if inside(lp, o))
    for lp in loops:
        lp["inner_loops"] = sum(1 for o in loops if inside(o, lp))
    return loops


def res_usage(cuobjdump: str, cubin: Path) -> dict[str, dict]:
    out = subprocess.run([cuobjdump, "-res-usage", str(cubin)], capture_output=True, text=True, check=True).stdout
    res = {}
    name = None
    for line in out.splitlines():
        m = re.match(r"\s*Function (\S+):", line)
        if m:
            name = m.group(1)
            continue
        if name and "REG:" in line:
            kv = dict(re.findall(r"(\w+(?:\[\d+\])?):(\d+)", line))
            res[name] = {"registers": int(kv.get("REG", 0)), "shared_static": int(kv.get("SHARED", 0)),
                         "stack": int(kv.get("STACK", 0)), "local": int(kv.get("LOCAL", 0))}
            name = None
    return res


def describe_kernel(mangled: str) -> dict:
    path = "cluster" if "cluster" in mangled else "single"
    for pat in ("split", "merge", "select", "finish"):
        if pat in mangled:
            path = pat
    dtype = "bf16" if "bfloat16_t" in mangled else "f16" if "half_t" in mangled else "f32"
    ints = [int(v) for v in re.findall(r"Li(\d+)E", mangled)]
    return {"path": path, "dtype": dtype, "template_ints": ints}


def elems_per_iter(desc: dict) -> int | None:
    """Elements per thread per iteration of the row loops: U (2) slots of VE elements."""
    ints = desc["template_ints"]
    if not ints:
        return None
    ve = ints[-1]  # <T, BLOCK, [CAP,] VE>
    return 2 * ve


def analyse_tree(root: Path, archs: list[str], label: str, nvcc: str, nvdisasm: str, cuobjdump: str,
                 work: Path) -> dict:
    kernel_file = str((root / KERNEL_SRC).resolve())
    bounds = sections((root / KERNEL_SRC).read_text())
    result = {"label": label, "archs": {}}
    for arch in archs:
        cubin = work / f"{label}-sm{arch}.cubin"
        t0 = time.time()
        cmd = [nvcc, *NVCC_FLAGS, f"-I{root / 'csrc'}", "-gencode", f"arch=compute_{arch},code=sm_{arch}", "-cubin",
               str(root / "csrc/cuda/socd_cuda.cu"), "-o", str(cubin)]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        sass = subprocess.run([nvdisasm, "-gi", "-c", str(cubin)], capture_output=True, text=True).stdout
        funcs = parse_sass(sass, kernel_file)
        res = res_usage(cuobjdump, cubin)
        kernels = []
        for name, fn in funcs.items():
            desc = describe_kernel(name)
            lps = loops_of(fn, bounds)
            epi = elems_per_iter(desc)
            def touches_row(lp):  # reads the row: global memory (or the cluster's shared copy)
                return lp["global_loads"] > 0 or (desc["path"] == "cluster" and lp["shared_loads"] > 0)

            for lp in lps:
                # row loops: loops that read the row and hold no inner loop that does (the
                # grid-stride loop over rows holds them all)
                inner = [o for o in lps if o is not lp and int(lp["start"], 16) <= int(o["start"], 16)
                         and int(o["end"], 16) <= int(lp["end"], 16) and touches_row(o)]
                # (a loop outside the named passes, e.g. the cluster's merge over its CTAs' bins, is
                # not a row loop)
                lp["row_loop"] = bool(epi and touches_row(lp) and not inner and lp["pass"] != "?")
                # exponentials per element and input (MUFU.EX2 / (elements * 2 inputs))
                lp["ex2_per_element_input"] = round(lp["exp_mufu"] / (2 * epi), 2) if epi else None
                if lp["row_loop"]:
                    lp["instructions_per_element"] = round(lp["instructions"] / epi, 2)
            kernels.append({"name": name, **desc, **res.get(name, {}), "instructions": len(fn["instr"]),
                            "loops": lps})
        kernels.sort(key=lambda k: (k["path"], k["dtype"], k["template_ints"]))
        result["archs"][f"sm_{arch}"] = {"kernels": kernels, "compile_s": round(time.time() - t0, 1)}
    return result


def summary_rows(res: dict) -> list[dict]:
    rows = []
    for arch, a in res["archs"].items():
        for k in a["kernels"]:
            ve = k["template_ints"][-1] if k["template_ints"] else None
            # the main row loops: outermost loops that touch the row, per pass (largest first)
            per_pass: dict[str, int] = {}
            for lp in k["loops"]:
                if lp.get("row_loop"):
                    per_pass[lp["pass"]] = per_pass.get(lp["pass"], 0) + lp["instructions"]
            rows.append({"version": res["label"], "arch": arch, "path": k["path"], "dtype": k["dtype"], "VE": ve,
                         "registers": k.get("registers"), "smem": k.get("shared_static"),
                         "instructions": k["instructions"], "row_loops": per_pass,
                         "row_loop_instr": sum(per_pass.values()),
                         "elems_per_iter": elems_per_iter(k) if k["template_ints"] else None})
    return rows


def print_table(rows: list[dict]) -> None:
    hdr = f"{'version':<8} {'arch':<6} {'path':<8} {'dt':<4} {'VE':>2} {'regs':>4} {'smem B':>7} {'instr':>6} " \
          f"{'loop/it':>7} {'el/it':>5} {'/el':>6}  per pass: instructions per element"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        if r["instructions"] < 64:  # a stub (the cluster kernel below sm_90 only traps)
            continue
        epi = r["elems_per_iter"] or 1
        per_el = r["row_loop_instr"] / epi
        loops = ", ".join(f"{' '.join(k.split()[:2])}={v / epi:.0f}"
                          for k, v in sorted(r["row_loops"].items(), key=lambda kv: -kv[1]))
        print(f"{r['version']:<8} {r['arch']:<6} {r['path']:<8} {r['dtype']:<4} {r['VE'] or '':>2} "
              f"{r['registers'] or 0:>4} {r['smem'] or 0:>7} {r['instructions']:>6} {r['row_loop_instr']:>7} "
              f"{epi:>5} {per_el:>6.1f}  {loops}")


TRITON_SCRIPT = r"""
import json, os, subprocess, sys, tempfile
os.environ.pop("TRITON_INTERPRET", None)
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from detox_kernels.triton import socd as ts
arch, nvdisasm, cuobjdump = int(sys.argv[1]), sys.argv[2], sys.argv[3]
sig = {"x_ptr": "*fp32", "y_ptr": "*fp32", "out_ptr": "*fp32", "alpha_ptr": "*fp32", "div_ptr": "*fp32",
       "k_ptr": "*i32", "x_stride": "i64", "y_stride": "i64", "out_stride": "i64", "W": "i32", "V": "i32",
       "k_min": "i32", "k_max": "i32"}
out = []
for dt in ("fp32", "bf16"):
    s = dict(sig)
    s["x_ptr"] = s["y_ptr"] = s["out_ptr"] = "*" + dt
    const = {"DIV": 5, "K_CEIL": True, "SIGNED": False, "COPY": True, "CUDA_MATH": True, "BLOCK": ts.GPU_BLOCK}
    for k in const:
        s[k] = "constexpr"
    cc = triton.compile(ASTSource(fn=ts._socd_kernel, signature=s, constexprs=const),
                        target=GPUTarget("cuda", arch, 32), options={"num_warps": ts.GPU_NUM_WARPS})
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cc.asm["cubin"])
    sass = subprocess.run([nvdisasm, "-c", f.name], capture_output=True, text=True).stdout
    res = subprocess.run([cuobjdump, "-res-usage", f.name], capture_output=True, text=True).stdout
    os.unlink(f.name)
    out.append({"dtype": dt, "sass": sass, "res": res, "shared_dynamic": cc.metadata.shared,
                "block": ts.GPU_BLOCK, "num_warps": ts.GPU_NUM_WARPS})
print(json.dumps(out))
"""


def analyse_triton(root: Path, label: str, arch: str, nvdisasm: str, cuobjdump: str) -> dict:
    """The Triton kernel (l2, paper preset, GPU chunk) compiled offline for sm_<arch> by Triton
    itself (no GPU needed): registers, shared memory, instructions and loops (no line info: the
    loops are listed by size; a chunk iteration covers BLOCK / (32 num_warps) elements per thread)."""
    env = dict(os.environ, PYTHONPATH=str(root))
    env.pop("TRITON_INTERPRET", None)
    p = subprocess.run([sys.executable, "-c", TRITON_SCRIPT, arch, nvdisasm, cuobjdump], capture_output=True,
                       text=True, env=env, cwd=str(root))
    if p.returncode != 0:
        return {"label": label, "error": p.stderr.strip().splitlines()[-1:] if p.stderr else "failed"}
    kernels = []
    for item in json.loads(p.stdout.strip().splitlines()[-1]):
        funcs = parse_sass(item["sass"], "/nonexistent")
        name, fn = next(iter(funcs.items()))
        lps = loops_of(fn, [])
        epi = item["block"] // (32 * item["num_warps"])
        reg = re.search(r"REG:(\d+)", item["res"])
        big = sorted(lps, key=lambda lp: -lp["instructions"])
        kernels.append({"dtype": item["dtype"], "registers": int(reg.group(1)) if reg else None,
                        "shared_dynamic": item["shared_dynamic"], "instructions": len(fn["instr"]),
                        "elements_per_thread_per_iteration": epi,
                        "loops": [{k: lp[k] for k in ("instructions", "global_loads", "global_stores", "exp_mufu",
                                                      "depth")} for lp in big]})
    return {"label": label, "arch": f"sm_{arch}", "kernels": kernels}


def print_triton(tri: list[dict]) -> None:
    print(f"\nTriton kernel (l2, GPU chunk), static: {'version':<8} {'dt':<5} regs  smem  instr  "
          "row loops (instructions / element, EX2 / element)")
    for t in tri:
        if "error" in t:
            print(f"   {t['label']}: {t['error']}")
            continue
        for k in t["kernels"]:
            epi = k["elements_per_thread_per_iteration"]
            lp = ", ".join(f"{lp['instructions'] / epi:.0f}/{lp['exp_mufu'] / epi:.0f}" for lp in k["loops"]
                           if lp["global_loads"] > 0 and lp["depth"] <= 1)
            print(f"   {t['label']:<8} {t['arch']:<6} {k['dtype']:<5} {k['registers'] or 0:>4} {k['shared_dynamic']:>5} "
                  f"{k['instructions']:>6}  {lp}")


def git_commit(root: Path) -> str:
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "csrc/cuda"],
                               capture_output=True, text=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except Exception:
        return "unknown"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", default=DEFAULT_BEFORE, help="git revision to compare with, or 'none'")
    ap.add_argument("--arch", action="append", help="90 and/or 80 (default both)")
    ap.add_argument("--out", default=str(REPO / "bench/results/socd-sass.json"))
    ap.add_argument("--triton", action=argparse.BooleanOptionalAction, default=True,
                    help="also compile the Triton kernel offline (Triton's own compiler, no GPU) and count")
    args = ap.parse_args(argv)
    archs = args.arch or ["90", "80"]
    nvcc, nvdisasm, cuobjdump = find_tool("nvcc"), find_tool("nvdisasm"), find_tool("cuobjdump")
    ver = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
    results = []
    with tempfile.TemporaryDirectory() as td:
        work = Path(td)
        if args.before != "none":
            tree = work / "before"
            tree.mkdir()
            arch_p = subprocess.run(["git", "-C", str(REPO), "archive", args.before, "csrc"], capture_output=True,
                                    check=True)
            subprocess.run(["tar", "-x", "-C", str(tree)], input=arch_p.stdout, check=True)
            r = analyse_tree(tree, archs, "before", nvcc, nvdisasm, cuobjdump, work)
            r["commit"] = args.before
            results.append(r)
        r = analyse_tree(REPO, archs, "after", nvcc, nvdisasm, cuobjdump, work)
        r["commit"] = git_commit(REPO)
        results.append(r)
        triton_results = []
        if args.triton:
            if args.before != "none":
                old = work / "before-py"
                old.mkdir()
                arch_p = subprocess.run(["git", "-C", str(REPO), "archive", args.before, "detox_kernels"],
                                        capture_output=True, check=True)
                subprocess.run(["tar", "-x", "-C", str(old)], input=arch_p.stdout, check=True)
                triton_results.append(analyse_triton(old, "before", archs[0], nvdisasm, cuobjdump))
            triton_results.append(analyse_triton(REPO, "after", archs[0], nvdisasm, cuobjdump))
    rows = [row for r in results for row in summary_rows(r)]
    print_table(rows)
    print_triton(triton_results)
    doc = {
        "what": "static SASS analysis of the SoCD CUDA kernels (bench/socd_sass.py)",
        "nvcc": ver,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "note": "loop/it: static instructions of the outermost loops over the row (all passes summed, both "
                "sides of branches counted); el/it: elements per thread per iteration (U=2 slots of VE); "
                "/el: loop/it divided by el/it. Static counts, not dynamic: rounds that are skipped at run "
                "time still count.",
        "summary": rows,
        "versions": results,
        "triton": triton_results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
