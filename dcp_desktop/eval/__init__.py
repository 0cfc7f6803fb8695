"""Evaluation of the pruning methods: the synthetic VQA benchmark (`scenes`) and the dcp-eval harness."""
