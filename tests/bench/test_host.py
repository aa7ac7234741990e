"""Host description."""

from __future__ import annotations

import platform

from yolox_deploy.bench.host import HostInfo, collect_host_info, cpu_model, package_versions


def test_collect_host_info_describes_this_machine():
    info = collect_host_info()
    assert info.cpu_model and info.cpu_model == cpu_model()
    assert info.logical_cores and info.logical_cores >= 1
    assert info.python == platform.python_version()
    assert "torch" in info.packages and "numpy" in info.packages
    line = info.summary()
    assert info.cpu_model in line and f"Python {info.python}" in line
    assert ("no GPU" in line) == (not info.gpus)


def test_round_trip():
    info = collect_host_info()
    assert HostInfo.from_dict(info.to_dict()) == info


def test_package_versions_has_no_missing_packages():
    versions = package_versions()
    assert all(isinstance(v, str) and v for v in versions.values())
    assert "definitely-not-installed" not in versions


def test_timing_environment_is_recorded(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    info = collect_host_info()
    assert info.env["OMP_WAIT_POLICY"] == "PASSIVE" and "OMP_NUM_THREADS" not in info.env
    assert "env OMP_WAIT_POLICY=PASSIVE" in info.summary()


def test_the_cpus_this_process_may_use_are_said(monkeypatch):
    import os

    from yolox_deploy import __version__

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    info = collect_host_info()
    assert info.usable_cpus == 1 and f"yolox-deploy {__version__}" in info.summary()
    assert ("1 usable by this process" in info.summary()) == (info.logical_cores > 1)
    old = {k: v for k, v in info.to_dict().items() if k != "usable_cpus"}  # a report written before the field
    assert HostInfo.from_dict(old).usable_cpus is None
