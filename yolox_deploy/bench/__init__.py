"""Benchmarks: GFLOPs and parameters, latency (model alone and full Detector), the paper's tables, reports.

    from yolox_deploy.bench import BenchConfig, run_benchmark, write_report, yolox_complexity
    report = run_benchmark(BenchConfig(models=["nano"], backends=["onnxruntime", "openvino"], iters=50))
    write_report(report, "bench_results")          # results.md / .csv / .json / .png
    yolox_complexity("yolox-s").gflops             # 26.93

Modules: ``flops`` (MAC counter), ``stats`` (percentiles), ``latency`` (clocks, timing loops), ``host``
(machine description), ``tables`` (published figures), ``artefacts`` (backend -> artefact, export cache),
``demo_pipeline`` (the authors' ONNX Runtime demo as a baseline), ``runner``, ``results``, ``report``, ``plot``.
"""

from .flops import Complexity, count_parameters, profile, yolox_complexity
from .host import HostInfo, collect_host_info
from .latency import CpuClock, CudaClock, PipelineTimes, clock_for, measure_calls, measure_pipeline
from .results import BenchReport, BenchRow, DemoComparison
from .stats import LatencyStats
from .tables import ALL_TABLES, PAPER, Published, published

__all__ = [
    "ALL_TABLES", "BenchConfig", "BenchReport", "BenchRow", "Complexity", "CpuClock", "CudaClock", "DemoComparison",
    "HostInfo", "LatencyStats", "PAPER", "PipelineTimes", "Published", "clock_for", "collect_host_info",
    "count_parameters", "measure_calls", "measure_pipeline", "profile", "published", "run_benchmark", "write_report",
    "yolox_complexity",
]


def __getattr__(name: str):
    # The runner and writers pull in the runtimes and matplotlib; load them on first use.
    if name in ("BenchConfig", "run_benchmark"):
        from . import runner

        return getattr(runner, name)
    if name == "write_report":
        from .report import write_report

        return write_report
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
