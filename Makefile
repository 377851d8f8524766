# Thin wrappers: the logic lives in scripts/.
.PHONY: setup build run test lint unit integration fuzz fuzz-smoke compose-test images oci bench api-key clean

setup:
	@scripts/setup

build: setup
	@scripts/build

run: build
	@scripts/run

lint: setup
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --quiet -- -D warnings
	cargo clippy --workspace --exclude portico-tests --exclude portico-check --exclude portico-state --target wasm32-wasip1 --all-targets --quiet -- -D warnings
	cargo fmt --manifest-path tests/fuzz/Cargo.toml -- --check
	cargo clippy --manifest-path tests/fuzz/Cargo.toml --all-targets --quiet -- -D warnings

unit: setup
	cargo test --workspace --exclude portico-tests

integration: build
	cargo test -p portico-tests

# Every fuzz target (tests/fuzz/) for FUZZ_SECONDS each (default 60); `make fuzz FUZZ_SECONDS=600`
# for a longer run. Installs a nightly toolchain and cargo-fuzz when missing.
fuzz:
	@scripts/fuzz

# CI's short run of every target: its seeds, then FUZZ_SMOKE_SECONDS (default 3) of fuzzing.
fuzz-smoke:
	@scripts/fuzz --smoke

# The docker-compose stack: skipped (with a line saying so) when no Docker engine answers,
# except under CI=true.
compose-test: build
	@scripts/compose-test

# Local container images: Envoy and the demo upstream (FROM scratch).
images: build
	@scripts/images runtime

# Each filter as an OCI image in Istio's Wasm format (FROM scratch, plugin.wasm).
oci: build
	@scripts/images oci

test: lint unit integration fuzz-smoke compose-test

# Portico against plain Envoy and Envoy's native filters (docs/BENCHMARKS.md, docs/bench.png).
# BENCH_QUICK=1 for a short run.
bench: setup
	@scripts/bench

# Generates a random API key and prints it with the SHA-256 digest that goes in the config.
api-key:
	@scripts/api-key

clean:
	cargo clean
	rm -rf dist
