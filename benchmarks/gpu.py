"""The benchmark's GPU rows: `python -m benchmarks.gpu [--dry-run] [--out DIR]`.

On the machine's GPU (benchmarks/gpu_check.sh runs it): standalone Triton (the `tritonserver`
binary with the same installed backends, benchmarks.standalone, here the `--gpu` PyTorch
backend) and serve_app's Triton runtime (`serve run` of configs/app.yaml, one replica holding
the GPU: num_gpus 1, num_cpus 4; HAProxy request path), over mlp4096 and resnet50 (a
ResNet-50-sized CNN) with KIND_GPU instance groups, binary tensors over HTTP, 1 and 64 clients,
--quick's point length. Writes results-gpu.json and results-gpu.md into --out, the card's name
among their notes. No in-process limit (it runs on the CPU), so no xlimit.

--dry-run, where no GPU is: builds the GPU repository, checks its configs and that each model
runs on the CPU, and says which contenders could run here; measures nothing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from benchmarks import loadgen, measure, report, standalone
from benchmarks.contenders import STANDALONE, TRITON, triton_available
from benchmarks.results import Run, log
from benchmarks.servers import make_workdir
from benchmarks.settings import RESULTS, parse_args
from benchmarks.workloads import MODELS, build_repository, model_file

GPU_MODELS = ("mlp4096", "resnet50")
DEPLOYMENT = {"num_replicas": 1, "ray_actor_options": {"num_cpus": 4, "num_gpus": 1}}


def card() -> str | None:
    """The first GPU's name, driver and memory (nvidia-smi), or None where there is none."""
    if shutil.which("nvidia-smi") is None:
        return None
    query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
    done = subprocess.run(query, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    return lines[0].strip() if done.returncode == 0 and lines else None


def settings(out: Path) -> argparse.Namespace:
    """--quick's points for the GPU rows' contenders, models and deployment."""
    return parse_args(
        [
            "--quick", "--models", ",".join(GPU_MODELS), "--contenders", f"{TRITON},{STANDALONE}",
            "--modes", "haproxy", "--concurrency", "1,64", "--codecs", "binary", "--protocols", "http",
            "--no-startup", "--no-transport", "--no-settle", "--deployment", json.dumps(DEPLOYMENT),
            "--out", str(out), "--tag", "gpu",
        ]
    )  # fmt: skip


def check_repository(repository: Path) -> list[str]:
    """Each model: its config parses with a KIND_GPU group, and its TorchScript runs on the CPU
    with the config's shapes. One line per model."""
    lines = []
    for name in GPU_MODELS:
        config = text_format.Parse(
            (repository / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
        )
        kinds = [model_config_pb2.ModelInstanceGroup.Kind.Name(group.kind) for group in config.instance_group]
        if kinds != ["KIND_GPU"]:
            raise AssertionError(f"{name}: instance groups {kinds}, not one KIND_GPU")
        module = torch.jit.load(str(model_file(repository, name)))
        with torch.inference_mode():
            output = module(torch.rand(2, MODELS[name].width))
        expected = (2, *config.output[0].dims)
        if tuple(output.shape) != expected:
            raise AssertionError(f"{name}: output {tuple(output.shape)}, config says {expected}")
        lines.append(f"{name}: KIND_GPU, {MODELS[name].description}, output {expected} on the CPU")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="no GPU: build and check, measure nothing")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    options = parser.parse_args(argv)
    args = settings(options.out)
    gpu = card()
    if gpu is None and not options.dry_run:
        log("no GPU (nvidia-smi finds none): use --dry-run")
        return 2
    scratch = make_workdir("bench-gpu")
    try:
        repository = build_repository(scratch / "repository", list(GPU_MODELS), gpu=True)
        for line in check_repository(repository):
            log(line)
        if options.dry_run:
            for name, why in ((STANDALONE, standalone.unavailable()), (TRITON, triton_available())):
                log(f"{name}: {why or 'can run here'}")
            log(f"wrk: {'installed' if loadgen.available() else 'missing (apt-get install wrk)'}")
            points = len(GPU_MODELS) * len(args.concurrency) * len(args.contenders)
            log(f"dry run on {gpu or 'no GPU'}: would measure {points} points")
            return 0
        if not loadgen.available():
            log("wrk is not installed: apt-get install wrk")
            return 2
        run = Run(args)
        run.note(f"GPU: {gpu}")
        run.note(f"serve_app triton deployment: {json.dumps(DEPLOYMENT)}; models on KIND_GPU")
        measure.measure_standalone(run, repository)
        for mode in args.modes:
            for group in measure.ray_groups(run):
                measure.measure_ray_group(run, group, mode, repository)
        text = report.write(run.data(), args.out, args.tag, with_plot=False)
        print("\n" + text, flush=True)
        log(f"wrote {args.out / 'results-gpu.json'}, results-gpu.md")
        return 1 if run.failures else 0
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
