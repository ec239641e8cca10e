# SPDX-License-Identifier: Apache-2.0
import os

import pytest
import torch

# Two cores in CI: keep torch from oversubscribing when pytest runs.
torch.set_num_threads(min(2, os.cpu_count() or 1))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def smollm2_path():
    from swisslm.io.embedded import default_model_path
    from swisslm.io.errors import CheckpointError

    try:
        return default_model_path()
    except CheckpointError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def smollm2(smollm2_path):
    import swisslm

    # float32: the exact expansion that tests compare with transformers and quantize further
    # (the default keeps the GGUF blocks quantized: tests/test_gguf_native.py)
    return swisslm.AutoModel.from_pretrained(smollm2_path, dtype="float32")


@pytest.fixture(scope="session")
def minilm_path():
    from swisslm.io.embedded import minilm_path
    from swisslm.io.errors import CheckpointError

    try:
        return minilm_path()
    except CheckpointError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module: on a shared 2-core machine two OpenMP threads stall each
    other (10x slower under load), and for tiny models a second thread buys little anyway."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny():
    """A tiny random Llama (seeded), for tests of what sits on top of a model (scoring,
    perplexity) rather than of the model maths."""
    import swisslm
    from swisslm.config import ModelConfig

    cfg = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                      max_position_embeddings=64)
    return swisslm.AutoModel.from_config(cfg, seed=0).eval()


@pytest.fixture(params=["avx2", "avx512"])
def isa(request):
    """Runs a test on each fp32 kernel this CPU has (AVX2 everywhere, AVX-512 where present)."""
    from swisslm import kernels

    if not kernels.available():
        pytest.skip("swisslm's CPU kernels did not build here")
    default = kernels.f32_isa()
    if kernels.f32_isa(request.param) != request.param:
        kernels.f32_isa(default)
        pytest.skip(f"this CPU has no {request.param}")
    yield request.param
    kernels.f32_isa(default)
