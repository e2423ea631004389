"""Replay buffers, observation flattening and demonstrations."""
