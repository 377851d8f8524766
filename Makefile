# Thin wrappers: the logic lives in scripts/.
.PHONY: setup build run test lint unit integration api-key clean

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

test: lint unit integration

# Generates a random API key and prints it with the SHA-256 digest that goes in the config.
api-key:
	@scripts/api-key

clean:
	cargo clean
	rm -rf dist
