"""python bench/bench_rock_disk.py [--n 100] [--disk 1g] [--files-disk 64m] [--bombs dd,files,sparse]

Exec p99 of one sandbox (`true` through REST) before and during a disk bomb in another sandbox, bounded to
`--disk`, for each bomb kind, each run over and over while the other sandbox is sampled:
  dd     - `dd` of 4 GiB zeros (stops at the quota with EDQUOT), removed, again;
  files  - 4 KiB files from one python3 process until the first error, removed, again (in a sandbox bounded to
           `--files-disk`, small enough to be reached within the window: near it every file makes btrfs commit);
  sparse - a 100 GiB sparse file, then 4 GiB written into it (stops at the quota), removed, again.
"before" is pooled from a quiet window just before each bomb (the host's other load drifts; this is a shared
2-core machine). Needs the quota-capable data root of `make docker` (scripts/ensure-docker.sh, which also puts
dockerd's exec root on a tmpfs and the btrfs loop on direct I/O: without those each exec waited ~1 s behind the
bomb's flushes). Target: p99 during / p99 before <= 2.0 for every bomb. Ends with one JSON line holding "ratio"
(the worst bomb's) and each bomb's own ratio and the error that stopped it.
"""

from __future__ import annotations

import argparse
import json
import threading
import time

from rock.launch import RockProcess

BOMBS = {
    "dd": "while true; do dd if=/dev/zero of=/bomb bs=1M count=4096; rm -f /bomb; done",
    "files": (
        "while true; do python3 -c \"import os\nos.makedirs('/f', exist_ok=True)\nn=0\n"
        "try:\n  while True:\n    open(f'/f/{n}','wb').write(b'x'*4096); n+=1\n"
        'except OSError as e: print(n, os.strerror(e.errno))" >&2; rm -rf /f; done'
    ),
    "sparse": (
        "while true; do truncate -s 100G /sparse && "
        "dd if=/dev/zero of=/sparse bs=1M count=4096 conv=notrunc; rm -f /sparse; done"
    ),
}
STOP = "pkill -f 'while [t]rue'; pkill -x dd; pkill -x python3; pkill -x truncate; true"


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def sample(sb, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        assert sb.exec(["true"]).exit_code == 0
        out.append(time.perf_counter() - t)
    return out


def during(bomb_sb, cmd: str, other, n: int) -> tuple[list[float], str]:
    """Samples of `other` while `cmd` runs in `bomb_sb` (killed after), and the first error the bomb got."""
    said: list[str] = []
    t = threading.Thread(target=lambda: said.append(bomb_sb.exec(cmd, timeout=3600).stderr), daemon=True)
    t.start()
    time.sleep(2.0)  # let the bomb reach its limit and keep hitting it
    xs = sample(other, n)
    bomb_sb.exec(STOP, timeout=60)
    t.join(timeout=60)
    bomb_sb.exec("rm -rf /bomb /f /sparse", timeout=120)
    errs = [line for line in "".join(said).splitlines() if "quota" in line.lower() or "space" in line.lower()]
    return xs, errs[0].strip() if errs else "no write error seen"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100, help="execs sampled during each bomb (half as many before it)")
    p.add_argument("--disk", default="1g")
    p.add_argument("--files-disk", default="64m")
    p.add_argument("--bombs", default="dd,files,sparse")
    args = p.parse_args()
    kinds = args.bombs.split(",")
    before: list[float] = []
    result: dict[str, dict] = {}
    with RockProcess() as rock, rock.client() as c:
        with (
            c.create_sandbox(disk=args.disk) as bomb,
            c.create_sandbox(disk=args.files_disk) as files_bomb,
            c.create_sandbox() as other,
        ):
            sample(other, 5)  # warm the connection and the page cache
            for kind in kinds:
                quiet = sample(other, args.n // 2)
                before += quiet
                xs, said = during(files_bomb if kind == "files" else bomb, BOMBS[kind], other, args.n)
                result[kind] = {"p99_s": round(pct(xs, 0.99), 4), "p50_s": round(pct(xs, 0.5), 4), "stopped": said}
                result[kind]["_quiet_p99"] = pct(quiet, 0.99)
            used = bomb.exec("du -sxm / | cut -f1").stdout.strip()
    b99, b50 = pct(before, 0.99), pct(before, 0.5)
    print(f"exec true, other sandbox: before p50 {b50 * 1000:.1f} ms p99 {b99 * 1000:.1f} ms (n={len(before)})")
    for kind, r in result.items():
        r["ratio"] = round(r["p99_s"] / b99, 3)
        quiet = r.pop("_quiet_p99")
        print(
            f"  during {kind:6s} bomb: p50 {r['p50_s'] * 1000:.1f} ms p99 {r['p99_s'] * 1000:.1f} ms "
            f"(quiet window just before: p99 {quiet * 1000:.1f} ms) -> {r['ratio']:.2f}x  ({r['stopped']})"
        )
    print(f"  dd/sparse bomb sandbox (disk={args.disk}) holds {used} MiB after the bombs")
    line = {"bench": "rock_disk", "p99_before_s": round(b99, 4), "p50_before_s": round(b50, 4), "n": args.n}
    line.update({"bombs": result, "ratio": max(r["ratio"] for r in result.values()), "target": 2.0})
    print(json.dumps(line))


if __name__ == "__main__":
    main()
