# Convenience targets. The pass/fail suite is scripts/test.sh; benchmarks are not part of it.
.PHONY: bench bench-smoke

# The whole benchmark set (under 20 minutes on the project's 2-core machine); needs root.
bench:
	tests/bench/run.sh

# Each benchmark briefly, to prove it still runs (a minute or two); its figures mean nothing.
bench-smoke:
	tests/bench/run.sh --smoke
