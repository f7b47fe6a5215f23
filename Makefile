# Convenience targets. The pass/fail suite is scripts/test.sh; benchmarks are not part of it.
.PHONY: bench bench-smoke

# The whole benchmark set (under 20 minutes on the project's 2-core machine); needs root.
bench:
	tests/bench/run.sh

# Each benchmark briefly, to prove it still runs (a minute or two); its figures mean nothing.
bench-smoke:
	tests/bench/run.sh --smoke

# The kernel matrix (docs/compatibility.md): Debian 11, 12 and 13 stock kernels in qemu guests
# plus this machine's kernel, end to end; writes .tmp/kernel-matrix/{results.json,matrix.md}.
# Needs root; images are cached in /var/cache/bpfleet-kernels (BPFLEET_KERNEL_CACHE).
.PHONY: kernel-matrix
kernel-matrix:
	PATH="$(CURDIR)/.venv/bin:$(CURDIR)/.tmp/bin:$$PATH" ANSIBLE_COLLECTIONS_PATH="$(CURDIR)/.tmp/collections" \
		.venv/bin/python tests/kernels/matrix.py $(if $(SUITES),--suites $(SUITES))
