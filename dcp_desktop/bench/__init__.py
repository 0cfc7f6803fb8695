"""Speed benchmarks that compare against a peer in the same run (`dcp-bench`, bench/cli.py)."""
