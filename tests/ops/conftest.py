import pytest

from op_cases import DEVICES, unavailable


@pytest.fixture(autouse=True)
def skip_unavailable_backend(request):
    """A test parametrized by ``backend`` (op_cases.backend_params) is skipped, with the package's
    reason, where that backend cannot run on its test device."""
    callspec = getattr(request.node, "callspec", None)
    backend = callspec.params.get("backend") if callspec else None
    if backend in DEVICES:
        why = unavailable(backend)
        if why:
            pytest.skip(why)
