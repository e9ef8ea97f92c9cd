#!/usr/bin/env python3
"""Writes a valid ONNX ModelProto of about SIZE_MB megabytes (a Gemm graph whose weight
initializer holds float32-like bytes), streaming, with the Python standard library only.

Usage: tools/gen-large-onnx.py OUT.onnx SIZE_MB
"""
import os
import sys


def varint(v):
    out = bytearray()
    while v >= 0x80:
        out.append(v & 0x7F | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def key(field, wire):
    return varint(field << 3 | wire)


def ld(field, payload):
    return key(field, 2) + varint(len(payload)) + payload


def vint(field, v):
    return key(field, 0) + varint(v)


def value_info(name, elem, dims):
    shape = b"".join(ld(1, vint(1, d) if isinstance(d, int) else ld(2, d.encode())) for d in dims)
    return ld(1, name.encode()) + ld(2, ld(1, vint(1, elem) + ld(2, shape)))


def main():
    out, size_mb = sys.argv[1], int(sys.argv[2])
    n = size_mb * 1_000_000 // 4 * 4
    cols = 1000
    rows = n // 4 // cols
    n = rows * cols * 4
    node = ld(1, b"x") + ld(1, b"W") + ld(2, b"y") + ld(4, b"MatMul")
    graph_head = (ld(1, node) + ld(2, b"bench")
                  + ld(11, value_info("x", 1, ["N", rows]))
                  + ld(12, value_info("y", 1, ["N", cols])))
    tensor_head = vint(1, rows) + vint(1, cols) + vint(2, 1) + ld(8, b"W") + key(9, 2) + varint(n)
    tensor_len = len(tensor_head) + n
    init_head = key(5, 2) + varint(tensor_len)
    graph_len = len(graph_head) + len(init_head) + tensor_len
    model_head = vint(1, 8) + ld(8, vint(2, 17)) + key(7, 2) + varint(graph_len)
    with open(out, "wb") as f:
        f.write(model_head + graph_head + init_head + tensor_head)
        left = n
        while left:
            k = min(left, 1 << 20)
            chunk = bytearray(os.urandom(k))
            # float32 little-endian with small magnitudes: the exponent byte repeats, as in weights.
            chunk[3::4] = bytes([0x3C]) * (k // 4)
            f.write(chunk)
            left -= k


if __name__ == "__main__":
    main()
