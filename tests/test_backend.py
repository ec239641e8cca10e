# SPDX-License-Identifier: Apache-2.0
"""The CPU kernel backend as a pass over a plain-torch core (issue 21, item 1): core/ never
imports the kernels; every family gives the torch model's numbers with the kernels applied, and
exactly the torch model's with SWISSLM_KERNELS=0; mixins and quantization compose with the pass;
the build is never a silent slow path."""

from __future__ import annotations

import ast
import ctypes
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import swisslm
from swisslm import kernels
from swisslm.config import ModelConfig
from swisslm.core.attention import eager_attention
from swisslm.core.slots import Mixin
from swisslm.kernels import backend

CORE = Path(swisslm.__file__).parent / "core"


def test_core_never_imports_the_kernels():
    # Every import form: `from .. import kernels`, `from ..kernels import x`, `import swisslm.kernels`,
    # `from swisslm import kernels`, `from swisslm.kernels.backend import x`.
    found = []
    for path in sorted(CORE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mod = node.module or ""
                if node.level:  # relative to swisslm.core
                    mod = ".".join(["swisslm", "core"][: 3 - node.level] + ([mod] if mod else []))
                names = [mod] + [f"{mod}.{a.name}" for a in node.names]
            else:
                continue
            if any(n == "swisslm.kernels" or n.startswith("swisslm.kernels.") for n in names):
                found.append(f"{path.name}:{node.lineno}")
    assert len(list(CORE.glob("*.py"))) >= 9 and not found, f"core imports the kernels at {found}"


@pytest.fixture(params=["kernels", "SWISSLM_KERNELS=0"])
def kernels_on(request, monkeypatch):
    """Runs a test with the kernels (where they build) and as a process with SWISSLM_KERNELS=0."""
    if request.param == "kernels":
        if not kernels.available():
            pytest.skip("swisslm's CPU kernels did not build here")
        yield True
        return
    monkeypatch.setenv("SWISSLM_KERNELS", "0")
    kernels.ops._lib.cache_clear()
    try:
        assert not kernels.available() and kernels.unavailable_reason() == "SWISSLM_KERNELS=0"
        yield False
    finally:
        monkeypatch.delenv("SWISSLM_KERNELS")
        kernels.ops._lib.cache_clear()


def _count_calls(monkeypatch):
    calls = []
    for name in ("stack_step", "layer_step", "attention_step", "decode_attention", "linear_f32"):
        real = getattr(kernels, name)
        monkeypatch.setattr(kernels.ops, name, lambda *a, _r=real, _n=name, **k: calls.append(_n) or _r(*a, **k))
    return calls


# -- every family, kernels on and off -------------------------------------------------------

transformers = pytest.importorskip("transformers")
V = 128
_BASE = dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=2, vocab_size=V, max_position_embeddings=64,
             bos_token_id=None, eos_token_id=None, pad_token_id=None)
_MULT = dict(embedding_multiplier=12.0, attention_multiplier=0.0625, residual_multiplier=0.22, logits_scaling=4.0)
# one shape per registered family (test_families.py has the rest, against transformers)
FAMILY_CASES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(intermediate_size=64, num_key_value_heads=2)),
    "granite": ("GraniteConfig", "GraniteForCausalLM", dict(intermediate_size=64, num_key_value_heads=2, **_MULT)),
    "granite_moe": ("GraniteMoeConfig", "GraniteMoeForCausalLM",
                    dict(intermediate_size=16, num_local_experts=4, num_experts_per_tok=2, **_MULT)),
    "granite_moe_shared": ("GraniteMoeSharedConfig", "GraniteMoeSharedForCausalLM",
                           dict(intermediate_size=16, num_local_experts=4, num_experts_per_tok=2,
                                shared_intermediate_size=24, num_key_value_heads=2, **_MULT)),
    "olmoe": ("OlmoeConfig", "OlmoeForCausalLM",
              dict(intermediate_size=16, num_experts=8, num_experts_per_tok=2, clip_qkv=0.5)),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", dict(intermediate_size=64, rotary_pct=0.5)),
    "bert": ("BertConfig", "BertModel", dict(intermediate_size=64, pad_token_id=0)),
}


@pytest.fixture(scope="module", params=sorted(FAMILY_CASES))
def family_folder(request, tmp_path_factory):
    cfg_cls, model_cls, kw = FAMILY_CASES[request.param]
    torch.manual_seed(0)
    hf = getattr(transformers, model_cls)(getattr(transformers, cfg_cls)(**{**_BASE, **kw})).eval()
    with torch.no_grad():  # make routing decisive and varied (HF inits routers near zero)
        for name, p in hf.named_parameters():
            if "router" in name or name.endswith("mlp.gate.weight"):
                p.normal_(0, 1.0)
    folder = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(folder)
    return request.param, folder


def test_every_family_is_covered():
    from swisslm.families import FAMILIES, _load_all

    _load_all()
    assert set(FAMILIES) <= set(FAMILY_CASES)


def test_family_parity_kernels_on_and_off(family_folder, kernels_on):
    family, folder = family_folder
    ref = swisslm.AutoModel.from_pretrained(folder, backend="torch")
    model = swisslm.AutoModel.from_pretrained(folder)  # the default backend
    assert backend.is_applied(model) == kernels_on
    assert not backend.is_applied(ref) and ref.fused_layers is None
    exact = not kernels_on  # off, the default model is the torch model: the same numbers
    ids = torch.randint(0, V, (2, 9), generator=torch.Generator().manual_seed(0))

    def close(a, b):
        if exact:
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)

    with torch.no_grad():
        got, want = model(ids), ref(ids)
        if family == "bert":
            close(got.last_hidden_state, want.last_hidden_state)
            return
        close(got.logits, want.logits)
        # cached decode: prefill 3, then one token at a time (the fused step where it applies)
        for m in (model, ref):
            m.setup_cache(2, 9)
        steps = []
        for m in (model, ref):
            out = [m(ids[:, :3], input_pos=torch.arange(3)).logits]
            out += [m(ids[:, t : t + 1], input_pos=torch.tensor([t])).logits for t in range(3, 9)]
            steps.append(torch.cat(out, 1))
        close(steps[0], steps[1])
        # and the cache gives the full forward's logits
        torch.testing.assert_close(steps[0], want.logits, atol=1e-4, rtol=1e-4)
    for m in (model, ref):
        m.clear_cache()
    tokens = [m.generate(ids[:, :5], max_new_tokens=10, eos_token_id=[]) for m in (model, ref)]
    assert torch.equal(tokens[0], tokens[1])


# -- mixins, quantization, remove_ ------------------------------------------------------------


def _tiny(backend_name="auto", **over):
    cfg = ModelConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_layers=3, num_heads=4,
                      num_kv_heads=2, head_dim=16, max_position_embeddings=128, **over)
    return swisslm.AutoModel.from_config(cfg, seed=0, backend=backend_name).eval()


@torch.no_grad()
def _decode(model, prompt, steps=4):
    B, T = prompt.shape
    model.setup_cache(B, T + steps)
    logits = model(prompt, input_pos=torch.arange(T)).logits[:, -1:]
    out = [logits]
    for t in range(steps):
        logits = model(logits.argmax(-1), input_pos=torch.tensor([T + t])).logits
        out.append(logits)
    return torch.cat(out, 1)


needs_kernels = pytest.mark.skipif(not kernels.available(), reason="swisslm's CPU kernels did not build here")


class HalfAttention(Mixin):
    """A custom attention function: eager attention, halved (so its use shows in the logits)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def attention_fn(self, q, k, v, mask, scale, is_causal, layer=None):
        self.calls.append((layer, q.shape[2]))
        return 0.5 * eager_attention(q, k, v, mask, scale, is_causal)


@needs_kernels
def test_custom_attention_mixin_falls_back_and_del_mixin_restores_the_fused_step(monkeypatch):
    model, ref = _tiny(), _tiny("torch")
    prompt = torch.randint(0, 97, (2, 5), generator=torch.Generator().manual_seed(1))
    calls = _count_calls(monkeypatch)
    before = _decode(model, prompt)
    assert calls.count("stack_step") == 4
    mixin = HalfAttention()
    model.add_mixin("halved", mixin)
    ref.add_mixin("halved", HalfAttention())
    calls.clear()
    mixed = _decode(model, prompt)
    # every layer's one-token steps ran the mixin (layers 0-2, T = 1), none fused
    assert {(i, 1) for i in range(3)} <= set(mixin.calls)
    assert not {"stack_step", "layer_step", "attention_step"} & set(calls)
    assert "linear_f32" in calls  # the layers fell back to their (kernel-backed) modules
    torch.testing.assert_close(mixed, _decode(ref, prompt), atol=1e-4, rtol=1e-4)  # its output is used
    assert not torch.allclose(mixed, before, atol=1e-3)
    model.del_mixin("halved")
    calls.clear()
    after = _decode(model, prompt)
    assert calls.count("stack_step") == 4
    assert torch.equal(after, before)  # the fused path again, bit for bit


@needs_kernels
@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_quantize_before_or_after_apply_is_the_same_model(scheme, monkeypatch):
    from swisslm.quant import quantize_

    prompt = torch.randint(0, 97, (2, 4), generator=torch.Generator().manual_seed(2))
    a = quantize_(_tiny(), scheme, group_size=32)  # apply_ (from_config's default), then quantize_
    b = kernels.apply_(quantize_(_tiny("torch"), scheme, group_size=32))
    calls = _count_calls(monkeypatch)
    got_a, got_b = _decode(a, prompt), _decode(b, prompt)
    assert calls.count("stack_step") == 8  # both fused, every one-token step
    assert torch.equal(got_a, got_b)
    kinds = {e["name"]: (e["kind"], e["backend"]) for e in kernels.describe(a)}
    assert kinds["layers.0.attn.qkv"] == (scheme, "swisslm") and kinds == {
        e["name"]: (e["kind"], e["backend"]) for e in kernels.describe(b)}


@needs_kernels
def test_remove_gives_back_the_torch_model():
    from swisslm.core.attention import Attention, sdpa_attention
    from swisslm.core.linear import Linear

    model, ref = _tiny(), _tiny("torch")
    prompt = torch.randint(0, 97, (1, 4))
    kernels.remove_(model)
    assert type(model.layers[0].attn) is Attention and type(model.layers[0].attn.qkv) is Linear
    assert model.layers[0].attn.attention_fn_impl is sdpa_attention and model.fused_layers is None
    assert torch.equal(_decode(model, prompt), _decode(ref, prompt))
    kernels.apply_(model)
    torch.testing.assert_close(_decode(model, prompt), _decode(ref, prompt), atol=1e-4, rtol=1e-4)


def test_backend_argument(kernels_on):
    cfg = ModelConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2)
    if kernels_on:
        assert backend.is_applied(swisslm.AutoModel.from_config(cfg, backend="cpu"))
    else:  # asked for explicitly where they cannot run: an error that says why, never a silent torch
        with pytest.raises(RuntimeError, match="SWISSLM_KERNELS=0"):
            swisslm.AutoModel.from_config(cfg, backend="cpu")
    with pytest.raises(ValueError, match="backend"):
        swisslm.AutoModel.from_config(cfg, backend="cuda-graphs")


def test_describe_lists_every_linear(kernels_on):
    model = _tiny()
    entries = kernels.describe(model)
    names = {e["name"] for e in entries}
    assert {"layers.0.attn.qkv", "layers.2.mlp.down", "head.proj"} <= names
    assert len(entries) == 3 * 4 + 1
    want = ("swisslm", kernels.f32_isa()) if kernels_on else ("torch", None)
    assert {(e["backend"], e["isa"]) for e in entries} == {want}


# -- the build ---------------------------------------------------------------------------------


@needs_kernels
def test_glue_is_baseline_x86_64():
    # No -mavx2 on the command line: the module's init and the CPU check must not contain a
    # single VEX-encoded instruction, or importing it on a CPU without AVX2 would fault.
    if shutil.which("objdump") is None:
        pytest.skip("no objdump")
    assert "-mavx2" not in kernels.CFLAGS
    asm = subprocess.run(["objdump", "-d", "--no-show-raw-insn", kernels.ops._lib().__file__], capture_output=True,
                         text=True, check=True).stdout
    funcs, cur = {}, None
    for line in asm.splitlines():
        if line.endswith(">:"):
            cur = line.split("<")[1].rstrip(">:")
            funcs[cur] = []
        elif cur and "\t" in line:
            funcs[cur].append(line.split("\t")[-1].split()[0] if line.split("\t")[-1].split() else "")
    glue = ["PyInit__swisslm_cpu", "swl_cpu_supported", "py_cpu_supported"]
    for name in glue:
        assert name in funcs and not [op for op in funcs[name] if op.startswith("v")], name
    assert any(op.startswith("vfmadd") for op in funcs["swl_linear_f32"] + sum(funcs.values(), []))


@needs_kernels
def test_kernels_and_torch_share_one_openmp_runtime():
    # torch ships its own libgomp; the extension links libgomp.so.1 and is loaded after torch,
    # so the soname resolves to torch's copy: one thread pool, not two fighting for the cores.
    # Checked in a fresh process holding only torch and the kernels: other packages of the test
    # session (sentencepiece bundles a libgomp of its own) would add runtimes of their own.
    if not Path("/proc/self/maps").exists():
        pytest.skip("no /proc/self/maps")
    code = ("import torch, pathlib; from swisslm import kernels; kernels.ops._lib(); "
            "print('\\n'.join(sorted({l.split()[-1] for l in pathlib.Path('/proc/self/maps').read_text()"
            ".splitlines() if 'libgomp' in l or 'libiomp' in l})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    runtimes = out.stdout.split()
    assert len(runtimes) == 1 and "torch" in runtimes[0], runtimes


def test_mirrors_are_ctypes_structs():
    from swisslm.kernels import layout

    assert all(issubclass(c, ctypes.Structure) for c in layout.STRUCTS)
    header = (Path(kernels.__file__).parent / "swisslm_kernels.h").read_text()
    for c in layout.STRUCTS:  # every mirrored field is named in the header's struct
        for name, _ in c._fields_:
            assert name in header, (c.__name__, name)


@needs_kernels
def test_a_decoded_model_deep_copies_and_the_copy_decodes_on_its_own_weights(monkeypatch):
    import copy

    model = _tiny()
    prompt = torch.randint(0, 97, (1, 4))
    before = _decode(model, prompt)  # leaves fused-step plans (raw pointers) on the modules
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(0.5)
    calls = _count_calls(monkeypatch)
    halved = _decode(twin, prompt)
    assert calls.count("stack_step") == 4 and not torch.allclose(halved, before)
    assert torch.equal(_decode(model, prompt), before)  # the original's plans still point at its own
