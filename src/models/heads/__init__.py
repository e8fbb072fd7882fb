"""Task heads: each owns a problem's loss, its metrics (as the field computes them) and the decoding of outputs."""
