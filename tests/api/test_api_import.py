"""`import hugeload` stays light: the API loads on first use, without numpy or torch."""

import subprocess
import sys


def run_py(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_import_does_not_load_numpy_or_torch():
    r = run_py("import hugeload, sys; assert 'numpy' not in sys.modules and 'torch' not in sys.modules")
    assert r.returncode == 0, r.stderr


def test_api_and_mapping_do_not_load_numpy():
    r = run_py(
        "import hugeload, sys\n"
        "m = hugeload.alloc(4096, '4k'); m.buffer[0] = 1; m.close()\n"
        "hugeload.map_file(sys.executable, '4k').close()\n"
        "assert callable(hugeload.safetensors.read_header)\n"
        "assert 'numpy' not in sys.modules and 'torch' not in sys.modules, sorted(sys.modules)"
    )
    assert r.returncode == 0, r.stderr


def test_lazy_names_are_listed():
    import hugeload

    for name in ("map_file", "alloc", "HugeMapping", "page_size_of", "FileChanged", "safetensors", "gguf"):
        assert name in dir(hugeload)
        assert getattr(hugeload, name) is not None
