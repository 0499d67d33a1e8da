"""Meta-training throughput across processes and devices: scaling efficiency.

Runs ``learned-dco train`` (the real CLI, :mod:`learned_dco.app.launch`) on the same config
in several layouts and reads each step's seconds from ``metrics.jsonl`` (the jitted
meta-step plus fetching its metrics; step 0, which compiles, and step 1 are dropped; the
median of the rest is the step time). Layouts:

* CPU: ``1x1`` (one process, one host device: the reference), ``1x2`` (one process, two
  host devices), ``2x1`` (two processes on localhost, one device each, gloo collectives);
* GPU (when ``jax.devices()`` holds GPUs): ``1 GPU`` (``CUDA_VISIBLE_DEVICES=0``) against
  ``1 process x all GPUs`` and ``all processes x 1 GPU`` (one process per GPU).

Reported: meta-steps per second, speedup over the reference measured in the same run, and
scaling efficiency = speedup / number of devices. Layouts run interleaved for ``--repeats``
rounds (medians), so slow phases of a shared machine hit all alike. Writes
``benchmarks/results/scaling.json``.

    python benchmarks/scaling.py              # CPU layouts, 20 steps
    python benchmarks/scaling.py --smoke      # a few steps (tests)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import table, write_json  # noqa: E402

CONFIG = """\
seed: 0
optimizer: {name: dcog, learning_rate: 0.05}
task: {name: least_squares, num_samples: 256, dim: 64}
estimator: {name: full, horizon: 50, num_tasks: 64, meta_loss: final_val}
meta_optimizer: {name: adam, learning_rate: 0.01}
train: {num_steps: 20, checkpoint_every: 0}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def run_layout(workdir: Path, config: Path, processes: int, devices: int, steps: int, platform: str,
               gpu_ids: list[list[int]] | None = None) -> list[float]:
    """Seconds per meta-step (steps >= 2) of one run in the given layout."""
    out = Path(tempfile.mkdtemp(dir=workdir))
    shutil.rmtree(out)
    base = [sys.executable, "-m", "learned_dco.app.cli", "train", str(config), "--out", str(out), "--no-progress",
            "--no-compile-cache", "--set", f"train.num_steps={steps}"]
    port = free_port()
    procs = []
    for i in range(processes):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        if platform == "cpu":
            env["JAX_PLATFORMS"] = "cpu"
            env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
        elif gpu_ids is not None:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpu_ids[i]))
        cmd = list(base)
        if processes > 1:
            cmd += ["--coordinator", f"localhost:{port}", "--num-processes", str(processes), "--process-id", str(i)]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for i, p in enumerate(procs):
        o, e = p.communicate(timeout=600)
        if p.returncode:
            raise RuntimeError(f"layout {processes}x{devices} process {i} failed ({p.returncode}):\n{e[-3000:]}")
    lines = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    shutil.rmtree(out, ignore_errors=True)
    return [r["seconds"] for r in lines if r["step"] >= 2]


def gpu_count() -> int:
    code = "import jax; print(sum(d.platform == 'gpu' for d in jax.devices()))"
    try:
        return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout.strip() or 0)
    except (subprocess.SubprocessError, ValueError):
        return 0


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20, help="meta-steps per run (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=1, help="interleaved rounds (default: %(default)s)")
    ap.add_argument("--smoke", action="store_true", help="5 steps, tiny config (tests)")
    ap.add_argument("--no-gpu", action="store_true", help="CPU layouts only")
    ap.add_argument("--out", help="results directory (default: benchmarks/results)")
    args = ap.parse_args(argv)
    steps = 5 if args.smoke else args.steps
    config_text = CONFIG.replace("num_samples: 256, dim: 64", "num_samples: 8, dim: 4").replace("horizon: 50", "horizon: 2") \
        if args.smoke else CONFIG

    layouts = [("cpu", "1x1", 1, 1, None), ("cpu", "1x2", 1, 2, None), ("cpu", "2x1", 2, 1, None)]
    if (os.cpu_count() or 1) >= 8 and not args.smoke:
        layouts += [("cpu", "1x4", 1, 4, None), ("cpu", "4x1", 4, 1, None)]
    n_gpu = 0 if args.no_gpu or args.smoke else gpu_count()
    if n_gpu:
        layouts += [("gpu", "1 GPU", 1, 1, [[0]])]
        if n_gpu > 1:
            layouts.append(("gpu", f"1 process x {n_gpu} GPUs", 1, n_gpu, [list(range(n_gpu))]))
            layouts.append(("gpu", f"{n_gpu} processes x 1 GPU", n_gpu, 1, [[i] for i in range(n_gpu)]))

    samples: dict[str, list[float]] = {name: [] for _, name, *_ in layouts}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        config = workdir / "config.yaml"
        config.write_text(config_text)
        for _ in range(args.repeats):
            for platform, name, procs, devs, ids in layouts:
                samples[name].append(statistics.median(run_layout(workdir, config, procs, devs, steps, platform, ids)))

    rows = []
    for platform, name, procs, devs, _ in layouts:
        t = statistics.median(samples[name])
        ref = statistics.median(samples["1x1" if platform == "cpu" else "1 GPU"])
        n_dev = procs * devs
        rows.append({"platform": platform, "layout": name, "processes": procs, "devices": n_dev,
                     "step_ms": 1e3 * t, "steps_per_s": 1 / t, "speedup": ref / t, "efficiency": ref / t / n_dev})
    print(table(rows, ["platform", "layout", "processes", "devices", "step_ms", "steps_per_s", "speedup", "efficiency"]))
    data = {"config": config_text, "steps": steps, "repeats": args.repeats, "cpu_count": os.cpu_count(), "rows": rows,
            "samples_s": samples}
    path = write_json("scaling", data, args.out)
    print(f"wrote {path}")
    return data


if __name__ == "__main__":
    main()
