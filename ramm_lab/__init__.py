"""End-to-end experiments that tie the components together (the demo's headline experiment)."""
