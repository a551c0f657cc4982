"""llmrt bench next to llama.cpp (llama-cpp-python) on this machine's CPU, with peak RSS.

    python benchmarks/cpu_vs_llama_cpp.py --peer /tmp/peer-venv/bin/python [-p 512 -n 128 -r 2]

The peer runs ../shared/tools/make_fixtures.py bench (2 threads, n_ctx 2048, batch 512). Each side
runs in its own process, one at a time; peak RSS is that process's maximum resident set.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

from llmrt import pull

MAKE_FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "tools" / "make_fixtures.py"


def child_peak_mib(cmd: list[str]) -> tuple[str, float]:
    """Run cmd in a fresh process (through a tiny wrapper, so that its own peak RSS is measured
    alone) and return its stdout and peak RSS in MiB."""
    wrapper = (
        "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True,"
        " text=True); sys.stderr.write(r.stderr); print(r.stdout);"
        " print('PEAK', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    out = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    body, _, peak = out.rpartition("PEAK ")
    return body, int(peak) / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--peer", required=True, help="python of a venv with llama-cpp-python")
    ap.add_argument("-p", type=int, default=512)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("-r", type=int, default=2)
    ap.add_argument("models", nargs="*", default=["smollm2-135m", "gemma3-270m"])
    a = ap.parse_args()
    print(f"{date.today()} {platform.processor() or platform.machine()}, "
          f"{resource.getpagesize()} B pages, python {platform.python_version()}")  # fmt: skip
    print("| model | runtime | pp t/s | tg t/s | peak RSS MiB | GGUF MiB |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for name in a.models:
        path = pull.pull(name, quiet=True)
        size = path.stat().st_size / 2**20
        cmd = ["llmrt", "bench", "-m", str(path), "-p", str(a.p), "-n", str(a.n), "-r", str(a.r),
               "--device", "cpu", "--json"]  # fmt: skip
        body, rss = child_peak_mib(cmd)
        rows = {r["test"]: r for r in json.loads(body)}
        pp, tg = rows[f"pp{a.p}"], rows[f"tg{a.n}"]
        pp_text = f"{pp['avg_ts']:.1f} ± {pp['stddev_ts']:.1f}"
        tg_text = f"{tg['avg_ts']:.2f} ± {tg['stddev_ts']:.2f}"
        row = [name, "llmrt (numpy reference)", pp_text, tg_text, f"{rss:.0f}", f"{size:.0f}"]
        print("| " + " | ".join(row) + " |")
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "bench.json"
            _, rss = child_peak_mib([a.peer, str(MAKE_FIXTURES), "bench", "--model", str(path),
                                     "--out", str(out), "--pp", str(a.p), "--tg", str(a.n),
                                     "--reps", str(a.r)])  # fmt: skip
            peer = json.loads(out.read_text())
        print(f"| {name} | llama.cpp (llama-cpp-python 0.3.36, 2 threads) | "
              f"{peer['pp_tps_median']:.1f} | {peer['tg_tps_median']:.2f} | {rss:.0f} | "
              f"{size:.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
