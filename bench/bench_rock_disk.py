"""python bench/bench_rock_disk.py [--n 60] [--disk 1g]

Exec p99 of one sandbox (`true` through REST) before and during a disk bomb in another sandbox: the bomb is
`dd` of 4 GiB zeros, over and over, into a sandbox bounded to `--disk` (it stops there with EDQUOT each time),
then a files bomb (4 KiB files until EDQUOT). Needs the quota-capable data root of `make docker`.
Target: p99 during / p99 before <= 2.0. Ends with one JSON line holding "ratio".
"""

from __future__ import annotations

import argparse
import json
import threading
import time

from rock.launch import RockProcess

DD_BOMB = "while true; do dd if=/dev/zero of=/bomb bs=1M count=4096; rm -f /bomb; done"
FILES_BOMB = (
    "while true; do python3 -c \"import os\nos.makedirs('/f', exist_ok=True)\nn=0\n"
    "try:\n  while True:\n    open(f'/f/{n}','wb').write(b'x'*4096); n+=1\nexcept OSError: pass\"; rm -rf /f; done"
)


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
    bomb_sb.exec("pkill -f 'while [t]rue'; pkill -x dd; pkill -x python3; true", timeout=30)
    t.join(timeout=60)
    errs = [line for line in "".join(said).splitlines() if "quota" in line.lower() or "space" in line.lower()]
    return xs, errs[0] if errs else "no write error seen"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=60)
    p.add_argument("--disk", default="1g")
    args = p.parse_args()
    with RockProcess() as rock, rock.client() as c:
        with c.create_sandbox(disk=args.disk) as bomb, c.create_sandbox() as other:
            sample(other, 5)  # warm the connection and the page cache
            before = sample(other, args.n)
            dd, dd_said = during(bomb, DD_BOMB, other, args.n)
            files, _ = during(bomb, FILES_BOMB, other, args.n)
            used = bomb.exec("du -sxm / | cut -f1").stdout.strip()
    b99, d99, f99 = pct(before, 0.99), pct(dd, 0.99), pct(files, 0.99)
    print(f"exec true, other sandbox: before p50 {pct(before, 0.5) * 1000:.1f} ms p99 {b99 * 1000:.1f} ms (n={args.n})")
    print(f"  during dd bomb      : p50 {pct(dd, 0.5) * 1000:.1f} ms p99 {d99 * 1000:.1f} ms  ({dd_said})")
    print(f"  during files bomb   : p50 {pct(files, 0.5) * 1000:.1f} ms p99 {f99 * 1000:.1f} ms")
    print(f"  bomb sandbox (disk={args.disk}) holds {used} MiB after the bombs")
    print(
        json.dumps(
            {
                "bench": "rock_disk",
                "p99_before_s": b99,
                "p99_dd_bomb_s": d99,
                "p99_files_bomb_s": f99,
                "ratio": max(d99, f99) / b99,
                "target": 2.0,
            }
        )
    )


if __name__ == "__main__":
    main()
