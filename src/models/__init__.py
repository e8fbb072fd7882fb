"""Models (nn.Modules mapping a batch's "x" to outputs) and task heads (loss, metrics, decoding)."""
