"""Random weights that llama.cpp computes with, and a vocabulary it tokenizes with (see the
package doc for how the blocks are built)."""

import math

from hugeload.modelgen.shapes import POOL_VALUES, QUANT_SIZES


def vocab(n_vocab: int) -> tuple[list[str], list[float], list[int]]:
    """Synthetic SentencePiece vocab: <unk>, <s>, </s>, 256 byte tokens, then
    pieces (ASCII chars, '▁'+char, char pairs) so that any text tokenizes."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    types = [2, 3, 3] + [6] * 256
    chars = [chr(c) for c in range(33, 127)]
    pieces: list[str] = ["▁"] + chars + ["▁" + c for c in chars]
    letters = "etaoinshrdlucmfwypvbgkjqxz"
    pieces += [a + b for a in letters for b in letters]
    pieces += ["▁" + a + b for a in letters for b in letters]
    pieces += [a + b + c for a in letters for b in letters for c in letters]
    need = n_vocab - len(tokens)
    if need > len(pieces):
        raise ValueError(f"n_vocab too large (max {len(tokens) + len(pieces)})")
    tokens += pieces[:need]
    types += [1] * need
    scores = [0.0] * 3 + [0.0] * 256 + [-float(i) for i in range(need)]
    return tokens, scores, types


def _kquant_blocks(gtype: str, n_blocks: int, sigma: float, rng):
    """Valid K-quant super-blocks (256 values) with random quants, values ~ mean 0, std ~sigma.

    Layouts (ggml-common.h): Q4_K d, dmin (f16), 12 bytes of 6-bit scales/mins, 128 bytes of
    4-bit quants; Q5_K the same plus 32 bytes of 5th bits before the quants; Q6_K 128 bytes
    low 4 bits, 64 bytes high 2 bits, 16 int8 scales, d (f16). A value is d*scale*q - dmin*min
    (Q4_K/Q5_K) or d*scale*(q - 32) (Q6_K); min = scale and dmin = d * mean(q) centre it.
    """
    import numpy as np

    bb = QUANT_SIZES[gtype][1]
    blocks = rng.integers(0, 256, size=(n_blocks, bb), dtype=np.uint8)
    sc = rng.integers(16, 32, size=(n_blocks, 8 if gtype != "Q6_K" else 16), dtype=np.uint8)
    mean_sc = 23.5
    if gtype == "Q6_K":
        d = np.float16(sigma / (mean_sc * math.sqrt((64**2 - 1) / 12)))
        blocks[:, 192:208] = sc  # int8 scales, all positive here
        blocks[:, 208:210] = np.full(n_blocks, d, dtype=np.float16).view(np.uint8).reshape(n_blocks, 2)
        return blocks
    levels = 16 if gtype == "Q4_K" else 32
    d = np.float16(sigma / (mean_sc * math.sqrt((levels**2 - 1) / 12)))
    dmin = np.float16(float(d) * (levels - 1) / 2)
    head = np.empty((n_blocks, 2), dtype=np.float16)
    head[:, 0], head[:, 1] = d, dmin
    blocks[:, 0:4] = head.view(np.uint8)
    # 6-bit scales and mins (here equal): j < 4 in the low 6 bits of bytes j (scale) and 4+j (min);
    # j >= 4 low nibbles in byte 4+j (scale | min << 4), high 2 bits in the top of bytes j-4 and j.
    lo, hi = sc[:, :4], sc[:, 4:]
    blocks[:, 4:8] = (lo & 63) | ((hi >> 4) << 6)
    blocks[:, 8:12] = (lo & 63) | ((hi >> 4) << 6)
    blocks[:, 12:16] = (hi & 15) | ((hi & 15) << 4)
    return blocks


class BlockPool:
    """Random blocks of one ggml type drawn once, handed out as slices at random block offsets."""

    def __init__(self, gguf, gtype: str, sigma: float, rng):
        import numpy as np

        bv, bb = QUANT_SIZES[gtype]
        self.n_blocks = POOL_VALUES // bv
        if gtype in ("Q4_K", "Q5_K", "Q6_K"):
            data = _kquant_blocks(gtype, self.n_blocks, sigma, rng)
        else:
            vals = rng.standard_normal((POOL_VALUES // 1024, 1024), dtype=np.float32) * sigma
            if gtype == "F16":
                data = vals.astype(np.float16).view(np.uint8)
            else:
                data = gguf.quants.quantize(vals, gguf.GGMLQuantizationType[gtype])
        self.bv, self.bs = bv, bb
        flat = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        assert flat.size == self.n_blocks * bb
        self.flat2 = np.concatenate([flat, flat])  # lets any slice <= pool wrap around without copying
        self.flat = flat
        self.rng = rng

    def take(self, n_values: int):
        import numpy as np

        nb = n_values // self.bv
        off = int(self.rng.integers(0, self.n_blocks))
        if nb <= self.n_blocks:
            return self.flat2[off * self.bs : (off + nb) * self.bs]
        reps = -(-(off + nb) // self.n_blocks)
        return np.tile(self.flat, reps)[off * self.bs : (off + nb) * self.bs]
