"""Kubernetes test fixtures: the API emulator (kmock + shims) with our CRD and KubeRay's, a kubeconfig, operators."""

from __future__ import annotations

import pathlib
import sys
from collections.abc import Callable, Iterator

import pytest
import yaml

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from emulator import RunningEmulator  # noqa: E402
from harness import KUBERAY_RAYCLUSTERS, KUBERAY_RAYJOBS, Api, Operator  # noqa: E402


@pytest.fixture(scope="session")
def emulator() -> Iterator[RunningEmulator]:
    if not KUBERAY_RAYJOBS.is_file():
        pytest.skip(
            f"KubeRay CRDs not found at {KUBERAY_RAYJOBS} (../shared/kuberay absent): the emulator needs the RayJob CRD"
        )
    from kubetrain.schema.crd import crd

    emu = RunningEmulator().start()
    emu.register_crd(crd())
    fast = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # KubeRay's CRDs are megabytes of YAML
    emu.register_crd(yaml.load(KUBERAY_RAYJOBS.read_text(), Loader=fast))
    emu.register_crd(yaml.load(KUBERAY_RAYCLUSTERS.read_text(), Loader=fast))
    yield emu
    emu.stop()


@pytest.fixture(scope="session")
def kubeconfig(emulator: RunningEmulator, tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("kube") / "config"
    path.write_text(emulator.kubeconfig())
    return path


@pytest.fixture(scope="session")
def api(emulator: RunningEmulator) -> Api:
    return Api(emulator.url)


@pytest.fixture
def start_operator(kubeconfig: pathlib.Path, tmp_path: pathlib.Path) -> Iterator[Callable[..., Operator]]:
    started: list[Operator] = []

    def start(*namespaces: str) -> Operator:
        op = Operator(kubeconfig, list(namespaces), tmp_path / f"operator-{len(started)}.log").start()
        started.append(op)
        return op

    yield start
    for op in started:
        op.stop()
