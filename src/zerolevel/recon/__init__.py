"""Multi-view reconstruction methods: each wires a field, a renderer, losses and a schedule."""
