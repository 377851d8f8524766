# Thin wrappers: the logic lives in scripts/.
.PHONY: setup build run test lint unit integration compose-test images oci bench api-key clean

setup:
	@scripts/setup

build: setup
	@scripts/build

run: build
	@scripts/run

lint: setup
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --quiet -- -D warnings
	cargo clippy --workspace --exclude portico-tests --exclude portico-check --target wasm32-wasip1 --all-targets --quiet -- -D warnings

unit: setup
	cargo test --workspace --exclude portico-tests

integration: build
	cargo test -p portico-tests

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

test: lint unit integration compose-test

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
